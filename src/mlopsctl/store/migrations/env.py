"""Alembic environment: runs against the engine mlopsctl passes in (no alembic.ini needed)."""

from alembic import context

from mlopsctl.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` CLI use during development
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
