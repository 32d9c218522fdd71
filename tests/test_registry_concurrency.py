"""Several `mlopsctl` processes writing to one store at once (issue 3, part 6), on SQLite and on PostgreSQL
(issue 20: there the row locks, not ``BEGIN IMMEDIATE``, must serialise the writers).

Eight worker threads each drive a sequence of real `mlopsctl` OS processes, released together by a
barrier, so up to eight processes hit the store at the same moment:

* 2 workers: ``train`` -> ``register``
* 3 workers: ``register`` (a run trained beforehand) -> ``promote --force``
* 3 workers: ``rollback`` -> ``rollback``

(Each `mlopsctl promote` process spends ~2 s importing pandas, scikit-learn and ONNX Runtime for the gate,
so the mix is sized to keep the test near 20 s on two cores.)

Afterwards the store must show what some serial execution would have: no command failed or saw
"database is locked", versions are exactly 1..N with none skipped or repeated, and the alias history is
one unbroken chain of moves, one row per successful move, ending at the alias's current holder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlopsctl.registry import rollback_target
from mlopsctl.store.models import AliasMove

MODEL = "breast-cancer"
TRAINERS = 2
REGISTRARS = 3
ROLLBACKERS = 3
ROLLBACKS_EACH = 2
WORKERS = TRAINERS + REGISTRARS + ROLLBACKERS
SEED_PROMOTIONS = [1, 2, 3, 1, 2, 3, 1]  # alias stack depth 7: each of the 6 rollbacks has somewhere to go


def _ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)


@pytest.fixture
def on_store(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every command of the test, in process or not, uses a fresh store of each backend (MLOPS_STORE_URL)."""
    monkeypatch.setenv("MLOPS_STORE_URL", store_url)
    return store_url


def test_parallel_writers_keep_versions_and_alias_history_consistent(make_project, cli, monkeypatch, on_store):
    assert WORKERS >= 8
    proj = make_project("breast-cancer", params="{ n_estimators = 5 }")
    monkeypatch.chdir(proj)
    pre_trained = []
    for _ in range(3 + REGISTRARS):
        r = cli("train", "--json")
        _ok(r)
        pre_trained.append(json.loads(r.stdout)["id"])
    for run_id in pre_trained[:3]:
        _ok(cli("register", run_id))
    for v in SEED_PROMOTIONS:
        _ok(cli("promote", MODEL, v, "--force"))

    barrier = threading.Barrier(WORKERS)
    base = [sys.executable, "-m", "mlopsctl", "-C", str(proj)]

    def mlopsctl(log: list, *args) -> str:
        p = subprocess.run([*base, *map(str, args)], capture_output=True, text=True, timeout=180, cwd=proj)
        log.append((args, p.returncode, p.stdout, p.stderr))
        assert p.returncode == 0, (args, p.returncode, p.stderr)
        return p.stdout

    def register(log: list, out: dict, run_id: int) -> int:
        m = re.fullmatch(rf"registered {MODEL}/(\d+)\n", mlopsctl(log, "register", run_id))
        assert m, log[-1]
        out["version"] = int(m.group(1))
        return out["version"]

    def register_and_promote(log: list, out: dict, i: int, run_id: int) -> None:
        v = register(log, out, run_id)
        first = mlopsctl(log, "promote", MODEL, v, "--force", "--reason", f"worker {i}").splitlines()[0]
        assert re.fullmatch(rf"promoted {MODEL}/{v} to @production( \(FORCED past the gate\))?", first), first

    def worker(i: int) -> dict:
        log: list = []
        out: dict = {"log": log, "rollbacks": {}}
        barrier.wait(timeout=60)
        try:
            if i < TRAINERS:
                register(log, out, json.loads(mlopsctl(log, "train", "--json", "--run-name", f"worker-{i}"))["id"])
            elif i < TRAINERS + REGISTRARS:
                register_and_promote(log, out, i, pre_trained[3 + i - TRAINERS])
            else:
                for k in range(ROLLBACKS_EACH):
                    m = re.fullmatch(rf"rolled back {MODEL}@production: version (\d+) -> (\d+)\n",
                                     mlopsctl(log, "rollback", MODEL, "--reason", f"worker {i} undo {k}"))
                    assert m, log[-1]
                    out["rollbacks"][f"worker {i} undo {k}"] = (int(m.group(1)), int(m.group(2)))
        except AssertionError as e:
            out["error"] = str(e)
        return out

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(worker, range(WORKERS)))

    calls = [c for r in results for c in r["log"]]
    assert [c for c in calls if "locked" in c[3].lower() or "Traceback" in c[3]] == []
    assert [c[:2] + (c[3],) for c in calls if c[1] != 0] == []
    assert [r.get("error") for r in results] == [None] * WORKERS
    assert len(calls) == TRAINERS * 2 + REGISTRARS * 2 + ROLLBACKERS * ROLLBACKS_EACH

    # versions: exactly 1..N, each handed out once
    n = 3 + TRAINERS + REGISTRARS
    assert sorted(r["version"] for r in results if "version" in r) == list(range(4, n + 1))
    r = cli("models", "show", MODEL, "--json")
    _ok(r)
    shown = json.loads(r.stdout)
    assert [v["version"] for v in shown["versions"]] == list(range(1, n + 1))
    assert len({v["run_id"] for v in shown["versions"]}) == n

    # alias history: one row per successful move, an unbroken chain, rollbacks that follow the stack
    hist = shown["history"]
    seeded = len(SEED_PROMOTIONS)
    assert [h["to_version"] for h in hist[:seeded]] == SEED_PROMOTIONS
    rollbacks = {k: v for r in results for k, v in r["rollbacks"].items()}
    assert len(rollbacks) == ROLLBACKERS * ROLLBACKS_EACH
    assert sorted(h["reason"] for h in hist[seeded:]) == sorted(
        [f"worker {i}" for i in range(TRAINERS, TRAINERS + REGISTRARS)] + list(rollbacks))
    for prev, cur in zip(hist, hist[1:]):
        assert cur["from_version"] == prev["to_version"], (prev, cur)
    moves = [AliasMove(action=h["action"], to_version=h["to_version"]) for h in hist]
    for i, h in enumerate(hist):
        if h["action"] == "rollback":
            assert h["to_version"] == rollback_target(moves[:i]), (i, hist)
            assert rollbacks[h["reason"]] == (h["from_version"], h["to_version"])
    assert shown["aliases"] == {"production": hist[-1]["to_version"]}

    # the audit trail saw every write exactly once
    r = cli("events", "--json", "--limit", "1000")
    _ok(r)
    kinds = [e["kind"] for e in json.loads(r.stdout)]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "trained": 3 + REGISTRARS + TRAINERS, "registered": n, "promoted": seeded + REGISTRARS,
        "rolled_back": ROLLBACKERS * ROLLBACKS_EACH}



# ---- a writer that moves the alias while the gate runs --------------------------------------------------

class _MovesAliasWhileScored:
    """The candidate's held-out frame, passed to ``models.promote(heldout=...)``; each time the gate
    takes its length (once per gate evaluation) another writer moves the alias, in its own transaction,
    between versions 1 and 2. Deterministic stand-in for a concurrent `mlopsctl promote`/`rollback`."""

    def __init__(self, frame, settings):
        self.frame, self.settings, self.moves = frame, settings, 0

    def __len__(self) -> int:
        from mlopsctl import registry
        from mlopsctl.project import open_project

        with open_project(self.settings).store.session() as s:
            model = registry.get_model(s, MODEL, lock=True)
            target = 2 if registry.alias_holder(s, model, "production").version == 1 else 1
            registry.move_alias(s, model, "production", registry.get_version(s, model, target), action="promote",
                                reason="other writer")
        self.moves += 1
        return len(self.frame)

    def __getitem__(self, key):
        return self.frame[key]


def _three_versions_and_a_busy_heldout(make_project, cli, monkeypatch, store_url):
    import io

    import pandas as pd

    from mlopsctl.services import models
    from mlopsctl.project import open_project
    from mlopsctl.config import load_settings

    proj = make_project("breast-cancer", params="{ n_estimators = 3 }")
    monkeypatch.chdir(proj)
    for _ in range(3):
        r = cli("train", "--json")
        _ok(r)
        _ok(cli("register", json.loads(r.stdout)["id"]))
    _ok(cli("promote", MODEL, "1"))
    settings = load_settings({}, {"MLOPS_STORE_URL": store_url}, proj)
    cand = models.load_model(settings, f"{MODEL}/3")
    frame = pd.read_parquet(io.BytesIO(open_project(settings).artifacts.get_bytes(cand.heldout_sha256)))
    return settings, _MovesAliasWhileScored(frame, settings)


def test_a_gated_promotion_regates_when_the_alias_moves_and_gives_up_cleanly(make_project, cli, monkeypatch, on_store):
    from mlopsctl.services import models
    from mlopsctl.errors import ConflictError

    settings, heldout = _three_versions_and_a_busy_heldout(make_project, cli, monkeypatch, on_store)
    with pytest.raises(ConflictError) as e:
        models.promote(settings, MODEL, 3, heldout=heldout, data_label="held-out rows")
    assert e.value.message == "breast-cancer@production kept moving while the gate ran; try again."
    assert heldout.moves == 5  # gated afresh against each new holder, 5 times
    r = cli("models", "show", MODEL, "--json")
    hist = json.loads(r.stdout)["history"]
    assert [h["reason"] for h in hist[1:]] == ["other writer"] * 5  # nothing of the promotion was recorded
    assert json.loads(cli("models", "show", f"{MODEL}/3", "--json").stdout)["gate"] is None


def test_a_forced_promotion_lands_although_the_alias_keeps_moving(make_project, cli, monkeypatch, on_store):
    # BUG: --force still re-gates whenever the holder changed while scoring and, after 5 tries, fails with
    # "breast-cancer@production kept moving while the gate ran; try again." (exit 4). Seen for real in the
    # parallel-writers test above when more `promote --force` processes ran at once on a loaded machine.
    from mlopsctl.services import models

    settings, heldout = _three_versions_and_a_busy_heldout(make_project, cli, monkeypatch, on_store)
    out = models.promote(settings, MODEL, 3, force=True, reason="must land", heldout=heldout,
                           data_label="held-out rows")
    assert (out["changed"], out["version"]) == (True, 3)
    hist = json.loads(cli("models", "show", MODEL, "--json").stdout)["history"]
    assert [h["reason"] for h in hist].count("must land") == 1
    assert hist[-1]["to_version"] == 3 and hist[-1]["reason"] == "must land"
    for prev, cur in zip(hist, hist[1:]):
        assert cur["from_version"] == prev["to_version"], (prev, cur)
