"""The store: SQLAlchemy models, the engine with its pragmas, and migrations (Alembic)."""
