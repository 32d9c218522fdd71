"""The registry as a library (issue 3): references, names, version numbering, aliases and their history.

Everything runs against a real, migrated store, once on a SQLite file in ``tmp_path`` and once on a
PostgreSQL database (conftest's ``store_url``). Versions here point at runs made
through ``tracking`` with placeholder digests: the registry functions only record lineage, and the
services that check the artifacts are covered end to end in ``test_cli_registry.py``.
"""

from __future__ import annotations


import pytest
from sqlalchemy import select, text

from mlopsctl import registry, tracking
from mlopsctl.errors import ConflictError, InvalidInputError, NotFoundError
from mlopsctl.registry import ModelRef, parse_ref, rollback_target, validate_name
from mlopsctl.store.db import Store, open_store
from mlopsctl.store.models import Alias, AliasMove, Event, ModelVersion, RegisteredModel

RULE = "1-100 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url)


def new_run(s) -> int:
    return tracking.create_run(s, "default").id


def add_version(store: Store, name: str) -> int:
    """Register a fresh run as the next version of ``name``; returns the version number."""
    with store.session() as s:
        model = registry.get_or_create_model(s, name)
        run_id = new_run(s)
        mv = registry.create_version(s, model, run_id=run_id, onnx_sha256="a" * 64, contract_sha256="b" * 64,
                                     task="classification", metrics={"roc_auc": 0.9}, parity={"passed": True})
        return mv.version


def move(store: Store, name: str, alias: str, version: int, action: str = "promote", reason: str = "test") -> None:
    with store.session() as s:
        model = registry.get_model(s, name, lock=True)
        registry.move_alias(s, model, alias, registry.get_version(s, model, version), action=action, reason=reason)


def history_rows(store: Store) -> list[tuple]:
    """Every column of every alias_history row, straight from the database."""
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM alias_history ORDER BY id"))]


# ---- references -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref, default, expected", [
    ("churn", None, ModelRef("churn")),
    ("churn", "production", ModelRef("churn", alias="production")),
    ("churn/3", "production", ModelRef("churn", version=3)),
    ("churn/12", None, ModelRef("churn", version=12)),
    ("churn@staging", "production", ModelRef("churn", alias="staging")),
    ("  churn@staging  ", None, ModelRef("churn", alias="staging")),
    ("a.b_c-1/7", None, ModelRef("a.b_c-1", version=7)),
    ("9lives@v2.champion", None, ModelRef("9lives", alias="v2.champion")),
])
def test_parse_ref_accepts_the_three_forms(ref, default, expected):
    assert parse_ref(ref, default) == expected


@pytest.mark.parametrize("ref, text_", [
    (ModelRef("churn", version=3), "churn/3"),
    (ModelRef("churn", alias="production"), "churn@production"),
    (ModelRef("churn"), "churn"),
])
def test_model_ref_str_round_trips(ref, text_):
    assert str(ref) == text_
    assert parse_ref(text_) == ref


@pytest.mark.parametrize("ref, message", [
    ("churn/0", "model reference 'churn/0' has an invalid version '0'; use e.g. churn/3."),
    ("churn/-1", "model reference 'churn/-1' has an invalid version '-1'; use e.g. churn/3."),
    ("churn/", "model reference 'churn/' has an invalid version ''; use e.g. churn/3."),
    ("churn/x", "model reference 'churn/x' has an invalid version 'x'; use e.g. churn/3."),
    ("churn/3/4", "model reference 'churn/3/4' has an invalid version '3/4'; use e.g. churn/3."),
    ("/3", f"model name '' is invalid; use {RULE}."),
    ("", f"model name '' is invalid; use {RULE}."),
    ("@production", f"model name '' is invalid; use {RULE}."),
    ("churn@", f"alias '' is invalid; use {RULE}."),
    ("churn@a@b", f"alias 'a@b' is invalid; use {RULE}."),
    ("churn@bad alias", f"alias 'bad alias' is invalid; use {RULE}."),
    ("bad name/2", f"model name 'bad name' is invalid; use {RULE}."),
    ("churn@prod/2", f"model name 'churn@prod' is invalid; use {RULE}."),
])
def test_parse_ref_rejects_bad_references_with_the_rule(ref, message):
    with pytest.raises(InvalidInputError) as e:
        parse_ref(ref)
    assert e.value.message == message
    assert e.value.exit_code == 2


@pytest.mark.parametrize("ref", ["churn/\u00b3", "churn/\u0663"])
def test_parse_ref_rejects_non_ascii_digit_versions(ref):
    # BUG: str.isdigit() accepts '³' (then int() raises a bare ValueError: a traceback, exit 1) and the
    # Arabic-Indic '٣' (silently read as version 3).
    with pytest.raises(InvalidInputError) as e:
        parse_ref(ref)
    assert e.value.message == f"model reference {ref!r} has an invalid version {ref[-1]!r}; use e.g. churn/3."


# ---- names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "A", "7", "churn", "Churn-Model_2.1", "a" * 100, "1.0", "x-", "x_"])
def test_valid_names_pass_unchanged(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "a" * 101, "a b", "a/b", "a@b", "a:b", "caf\u00e9", "a\tb"])
def test_invalid_names_say_what_is_allowed(name):
    with pytest.raises(InvalidInputError) as e:
        validate_name(name)
    assert e.value.message == f"model name {name!r} is invalid; use {RULE}."


def test_invalid_alias_names_say_alias():
    with pytest.raises(InvalidInputError) as e:
        validate_name("no way", "alias")
    assert e.value.message == f"alias 'no way' is invalid; use {RULE}."


def test_non_string_name_is_invalid_input():
    with pytest.raises(InvalidInputError) as e:
        validate_name(None)  # type: ignore[arg-type]
    assert e.value.message == f"model name None is invalid; use {RULE}."


@pytest.mark.parametrize("name", ["churn\n", "a" * 100 + "\n"])
def test_a_trailing_newline_is_not_a_valid_name(name):
    # BUG: NAME_RE ends in '$', which also matches before a final newline, so "churn\n" passes (and
    # `register RUN --name $'churn\n'` creates a model whose name prints on two lines).
    with pytest.raises(InvalidInputError) as e:
        validate_name(name)
    assert e.value.message == f"model name {name!r} is invalid; use {RULE}."


def test_get_or_create_model_validates_the_name(store):
    with pytest.raises(InvalidInputError), store.session() as s:
        registry.get_or_create_model(s, "no spaces")
    with store.session() as s:
        assert s.scalars(select(RegisteredModel)).all() == []


# ---- versions -----------------------------------------------------------------------------------------

def test_versions_are_consecutive_per_model(store):
    got = [(name, add_version(store, name)) for name in ["a", "a", "b", "a", "b", "a", "c"]]
    assert got == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("a", 4), ("c", 1)]
    with store.session() as s:
        rows = s.execute(select(RegisteredModel.name, ModelVersion.version)
                         .join(ModelVersion, ModelVersion.model_id == RegisteredModel.id)
                         .order_by(RegisteredModel.name, ModelVersion.version)).all()
    assert [tuple(r) for r in rows] == [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2), ("c", 1)]


def test_a_version_records_its_lineage_and_creator(store):
    with store.session() as s:
        model = registry.get_or_create_model(s, "churn")
        run_id = new_run(s)
        mv = registry.create_version(s, model, run_id=run_id, onnx_sha256="c" * 64, contract_sha256="d" * 64,
                                     heldout_sha256="e" * 64, task="regression", dataset_fingerprint="f" * 64,
                                     git_commit="1" * 40, metrics={"r2": 0.5}, parity={"passed": True})
        assert (mv.version, mv.run_id, mv.onnx_sha256, mv.contract_sha256, mv.heldout_sha256, mv.task,
                mv.dataset_fingerprint, mv.git_commit, mv.metrics, mv.gate) == (
            1, run_id, "c" * 64, "d" * 64, "e" * 64, "regression", "f" * 64, "1" * 40, {"r2": 0.5}, None)
        assert mv.created_by == registry.actor()
        assert "@" in mv.created_by


def test_the_same_run_cannot_become_two_versions_of_one_model(store):
    with store.session() as s:
        model = registry.get_or_create_model(s, "churn")
        run_id = new_run(s)
        fields = dict(run_id=run_id, onnx_sha256="a" * 64, contract_sha256="b" * 64, task="classification",
                      metrics={}, parity={"passed": True})
        registry.create_version(s, model, **fields)
        with pytest.raises(ConflictError) as e:
            registry.create_version(s, model, **fields)
    assert e.value.message == f"run {run_id} is already registered as churn/1."
    assert e.value.exit_code == 4
    # ... but it may be a version of another model
    with store.session() as s:
        other = registry.get_or_create_model(s, "churn-b")
        assert registry.create_version(s, other, **fields).version == 1


def test_get_model_and_get_version_not_found_messages(store):
    with pytest.raises(NotFoundError) as e, store.session() as s:
        registry.get_model(s, "churn")
    assert e.value.message == "model 'churn' does not exist; registered: (none yet)."
    add_version(store, "zeta")
    add_version(store, "alpha")
    add_version(store, "alpha")
    with pytest.raises(NotFoundError) as e, store.session() as s:
        registry.get_model(s, "churn")
    assert e.value.message == "model 'churn' does not exist; registered: alpha, zeta."
    with pytest.raises(NotFoundError) as e, store.session() as s:
        registry.get_version(s, registry.get_model(s, "alpha"), 3)
    assert e.value.message == "alpha has no version 3; versions are 1 to 2."
    assert e.value.exit_code == 3


def test_get_version_of_a_model_without_versions(store):
    with store.session() as s:
        registry.get_or_create_model(s, "empty")
    with pytest.raises(NotFoundError) as e, store.session() as s:
        registry.get_version(s, registry.get_model(s, "empty"), 1)
    assert e.value.message == "empty has no version 1; it has no versions yet."


# ---- resolve ------------------------------------------------------------------------------------------

def test_resolve_by_version_and_by_alias(store):
    for _ in range(3):
        add_version(store, "churn")
    move(store, "churn", "production", 2)
    move(store, "churn", "staging", 3)
    with store.session() as s:
        assert registry.resolve(s, parse_ref("churn/1")).version == 1
        assert registry.resolve(s, parse_ref("churn@production")).version == 2
        assert registry.resolve(s, parse_ref("churn", "staging")).version == 3
        assert registry.alias_holder(s, registry.get_model(s, "churn"), "production").version == 2
        assert registry.alias_holder(s, registry.get_model(s, "churn"), "canary") is None


@pytest.mark.parametrize("ref, exc, message", [
    ("churn", InvalidInputError, "model reference 'churn' needs a version or an alias, as in churn/3 or churn@production."),
    ("churn/4", NotFoundError, "churn has no version 4; versions are 1 to 2."),
    ("churn@canary", NotFoundError, "churn has no alias 'canary'; its aliases are production, staging."),
    ("other@production", NotFoundError, "model 'other' does not exist; registered: churn, plain."),
    ("plain@production", NotFoundError,
     "plain has no alias 'production'; promote a version first (mlopsctl promote plain 1 --alias production)."),
])
def test_resolve_errors(store, ref, exc, message):
    add_version(store, "churn")
    add_version(store, "churn")
    add_version(store, "plain")
    move(store, "churn", "production", 1)
    move(store, "churn", "staging", 2)
    with pytest.raises(exc) as e, store.session() as s:
        registry.resolve(s, parse_ref(ref))
    assert e.value.message == message


# ---- aliases and their history -------------------------------------------------------------------------

def test_move_alias_appends_who_when_from_to_why(store):
    for _ in range(2):
        add_version(store, "churn")
    with store.session() as s:
        model = registry.get_model(s, "churn", lock=True)
        first = registry.move_alias(s, model, "production", registry.get_version(s, model, 1), action="promote",
                                    reason="first", who="alice@host")
        second = registry.move_alias(s, model, "production", registry.get_version(s, model, 2), action="promote",
                                     reason="better", forced=True, gate={"passed": False}, who="bob@host")
        assert [(m.alias, m.from_version, m.to_version, m.action, m.forced, m.reason, m.actor, m.gate)
                for m in (first, second)] == [
            ("production", None, 1, "promote", False, "first", "alice@host", None),
            ("production", 1, 2, "promote", True, "better", "bob@host", {"passed": False}),
        ]
        assert first.created_at <= second.created_at
        assert s.scalars(select(Alias.version_id)).all() == [registry.get_version(s, model, 2).id]


def test_move_alias_validates_the_alias(store):
    add_version(store, "churn")
    with pytest.raises(InvalidInputError) as e, store.session() as s:
        model = registry.get_model(s, "churn")
        registry.move_alias(s, model, "no way", registry.get_version(s, model, 1), action="promote", reason="x")
    assert e.value.message == f"alias 'no way' is invalid; use {RULE}."


def test_history_is_append_only_and_per_alias(store):
    for _ in range(3):
        add_version(store, "churn")
    move(store, "churn", "production", 1)
    move(store, "churn", "production", 2)
    before = history_rows(store)
    move(store, "churn", "staging", 3)
    move(store, "churn", "production", 1, action="rollback", reason="undo")
    move(store, "churn", "production", 3)
    after = history_rows(store)
    assert after[:2] == before  # earlier rows are never rewritten
    assert len(after) == 5
    with store.session() as s:
        model = registry.get_model(s, "churn")
        prod = [(m.from_version, m.to_version, m.action) for m in registry.history(s, model, "production")]
        staging = [(m.from_version, m.to_version, m.action) for m in registry.history(s, model, "staging")]
        everything = [(m.alias, m.to_version) for m in registry.history(s, model)]
    assert prod == [(None, 1, "promote"), (1, 2, "promote"), (2, 1, "rollback"), (1, 3, "promote")]
    assert staging == [(None, 3, "promote")]
    assert everything == [("production", 1), ("production", 2), ("staging", 3), ("production", 1), ("production", 3)]


def mv(action: str, to: int) -> AliasMove:
    return AliasMove(alias="production", action=action, to_version=to)


def P(v: int) -> AliasMove:
    return mv("promote", v)


def R(v: int) -> AliasMove:
    return mv("rollback", v)


@pytest.mark.parametrize("moves, target", [
    ([], None),
    ([P(1)], None),
    ([P(1), P(2)], 1),
    ([P(1), P(2), P(3)], 2),
    ([P(1), P(2), P(3), R(2)], 1),          # a rollback undoes the last promotion...
    ([P(1), P(2), P(3), R(2), R(1)], None),  # ... and a second rollback the one before
    ([P(1), P(2), R(1), P(3)], 1),          # 2 was rolled back, so 3's predecessor is 1
    ([P(1), P(2), R(1), P(2)], 1),
    ([P(1), P(2), P(1)], 2),                # promoting an old version again is a new move
    ([P(1), P(2), P(1), R(2)], 1),
    ([P(5), P(3), P(4), R(3), P(6), R(3)], 5),
])
def test_rollback_target_is_a_stack_of_holders(moves, target):
    assert rollback_target(moves) == target


# ---- events -------------------------------------------------------------------------------------------

def test_events_are_listed_oldest_first_and_filtered_by_model(store):
    with store.session() as s:
        for i, (kind, model) in enumerate([("trained", None), ("registered", "a"), ("registered", "b"),
                                           ("promoted", "a"), ("rolled_back", "a")]):
            registry.add_event(s, kind, f"event {i}", model=model, version=1 if model else None, run_id=i)
    with store.session() as s:
        assert [(e.kind, e.message) for e in registry.list_events(s)] == [
            ("trained", "event 0"), ("registered", "event 1"), ("registered", "event 2"),
            ("promoted", "event 3"), ("rolled_back", "event 4")]
        assert [e.message for e in registry.list_events(s, "a")] == ["event 1", "event 3", "event 4"]
        assert [e.message for e in registry.list_events(s, limit=2)] == ["event 3", "event 4"]
        assert [e.message for e in registry.list_events(s, "nope")] == []
        assert {e.actor for e in s.scalars(select(Event))} == {registry.actor()}


def test_list_models_is_sorted_with_versions_and_aliases(store):
    add_version(store, "zeta")
    add_version(store, "alpha")
    add_version(store, "alpha")
    move(store, "alpha", "production", 2)
    with store.session() as s:
        got = [(m.name, [v.version for v in m.versions], {a.name: a.version.version for a in m.aliases})
               for m in registry.list_models(s)]
    assert got == [("alpha", [1, 2], {"production": 2}), ("zeta", [1], {})]
