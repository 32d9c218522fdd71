"""The dashboard's run search (services/browse.py) on shapes nobody designed: keys with spaces, dots,
unicode and operator characters, metrics logged at many steps and at the same step twice, infinities,
params that are numbers, text or both, search text with SQL wildcards, and a wide store. Every expected
answer is computed here in Python from what was logged, never read back from the code under test."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

ODD = ["learning rate", "α.β", "x>y", "col=1", "tag~mark"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory):
    """40 runs through the Python API (built once; the tests only read): per run a known latest value for
    each metric and known params."""
    from served_projects import module_isolation

    root = tmp_path_factory.mktemp("browse")
    with module_isolation(root) as mp:
        mp.setenv("GIT_CEILING_DIRECTORIES", str(root.parent))
        yield _log_runs(root)


def _log_runs(root: Path):
    import mlopsctl
    from mlopsctl.config import load_settings

    (root / ".mlops.toml").write_text("")
    settings = load_settings({}, {}, root)
    rnd = random.Random(7)
    truth: dict[int, dict] = {}
    for i in range(40):
        with mlopsctl.start_run(experiment="odd" if i % 2 else "plain", run_name=f"r{i}_%", settings=settings) as run:
            metrics = {k: round(rnd.uniform(-1, 1), 6) for k in ODD[:3]}
            steps = [(s, round(rnd.random(), 6)) for s in range(rnd.randint(1, 5))]
            for s, v in steps:
                run.log_metric("curve", v, step=s)
            run.log_metrics(metrics)
            if i % 5 == 0:
                run.log_metric("curve", 99.0, step=steps[-1][0])  # the same step again: the later row wins
                steps.append((steps[-1][0], 99.0))
            if i == 7:
                run.log_metric("wild", math.inf)
            params = {"n": i * 3, "mixed": i if i % 3 else f"auto{i}", "col=1": "yes" if i % 4 == 0 else "no",
                      "flag": i % 2 == 0}
            run.log_params(params)
            run.set_tag("tag~mark", "über" if i % 2 else "plain")
            truth[run.id] = {"metrics": {**metrics, "curve": steps[-1][1]}, "params": params, "odd": bool(i % 2)}
    return settings, truth


def search(settings, **kw):
    from mlopsctl.services import browse

    return browse.search_runs(settings, per_page=500, **kw)


def test_a_metric_sort_uses_each_runs_latest_value(logged):
    settings, truth = logged
    out = search(settings, sort="metrics.curve", order="desc")
    expected = sorted(truth, key=lambda r: (-truth[r]["metrics"]["curve"], -r))
    assert [r["id"] for r in out["runs"]] == expected
    assert [r["values"]["metrics.curve"] for r in out["runs"]] == [truth[r]["metrics"]["curve"] for r in expected]


@pytest.mark.parametrize("key", ODD[:3])
def test_odd_metric_keys_sort_and_filter(logged, key):
    settings, truth = logged
    out = search(settings, sort=f"metrics.{key}", order="asc", columns=[f"metrics.{key}"])
    assert [r["id"] for r in out["runs"]] == sorted(truth, key=lambda r: (truth[r]["metrics"][key], r))
    flt = search(settings, filter=f"metrics.`{key}` > 0.25")
    assert sorted(r["id"] for r in flt["runs"]) == sorted(r for r in truth if truth[r]["metrics"][key] > 0.25)


def test_params_compare_as_numbers_where_they_are_and_as_text_elsewhere(logged):
    settings, truth = logged
    out = search(settings, filter="params.n >= 60 and params.n < 90")
    assert sorted(r["id"] for r in out["runs"]) == sorted(r for r in truth if 60 <= truth[r]["params"]["n"] < 90)
    out = search(settings, sort="params.n", order="desc", columns=["params.n"])
    assert [r["values"]["params.n"] for r in out["runs"]] == [str(n) for n in sorted((t["params"]["n"] for t in truth.values()), reverse=True)]
    out = search(settings, sort="params.mixed", order="asc", columns=["params.mixed"])
    numbers = sorted(t["params"]["mixed"] for t in truth.values() if isinstance(t["params"]["mixed"], int))
    texts = sorted(t["params"]["mixed"] for t in truth.values() if isinstance(t["params"]["mixed"], str))
    assert [r["values"]["params.mixed"] for r in out["runs"]] == [str(n) for n in numbers] + texts
    out = search(settings, filter="params.`col=1` = yes and params.flag = True")
    assert sorted(r["id"] for r in out["runs"]) == sorted(r for r in truth if truth[r]["params"]["col=1"] == "yes")


def test_unicode_tags_operator_characters_and_wildcards_in_search(logged):
    settings, truth = logged
    out = search(settings, filter="tags.`tag~mark` = über")
    assert sorted(r["id"] for r in out["runs"]) == sorted(r for r in truth if truth[r]["odd"])
    out = search(settings, filter="tags.`tag~mark` ~ ber", experiment="odd")
    assert len(out["runs"]) == 20
    assert search(settings, q="%")["total"] == 40  # every name holds a literal %
    assert search(settings, q="r1_%")["total"] == 1  # _ and % are not wildcards
    assert search(settings, q="r_")["total"] == 0


def test_infinities_become_null_in_json_and_sort_last(logged):
    settings, _ = logged
    out = search(settings, sort="metrics.wild", columns=["metrics.wild"])
    assert out["runs"][0]["values"]["metrics.wild"] is None  # inf is no JSON number
    json.dumps(out, allow_nan=False)


def test_the_key_lists_follow_new_runs(tmp_path):
    import mlopsctl
    from mlopsctl.config import load_settings

    settings = load_settings({}, {}, tmp_path)
    with mlopsctl.start_run(settings=settings) as run:
        run.log_metric("old", 1.0)
    assert search(settings)["keys"]["metrics"] == ["old"]
    with mlopsctl.start_run(settings=settings) as run:
        run.log_metric("brand new", 1.0)
    assert "brand new" in search(settings)["keys"]["metrics"]


def test_a_page_of_many_runs_reads_only_its_rows(logged):
    settings, truth = logged
    from mlopsctl.services import browse

    pages = [browse.search_runs(settings, per_page=7, page=p, sort="id", order="asc") for p in range(1, 7)]
    assert [r["id"] for p in pages for r in p["runs"]] == sorted(truth)
    assert pages[0]["pages"] == 6 and len(pages[-1]["runs"]) == 40 - 35
