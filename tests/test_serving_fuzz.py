"""A deterministic fuzz pass over the scoring routes: bad input must never be a 5xx.

For each route (/predict, /invocations, /v2/models/<m>[/versions/1]/infer), each kind of damage and each
model (breast-cancer: all FP32; churn: FP32 + BYTES with missing values), a seeded generator produces
CASES malformed requests: random bytes, truncated JSON, deep nesting, huge numbers, NaN/Infinity
literals, wrong types at every level of a valid body, strings where lists belong, non-UTF-8 bodies,
Content-Types and CSV/Parquet bodies (MLflow), shapes and lying binary lengths (V2). Every answer must be
< 500 with a JSON body in the route's own protocol shape, and the app must still answer a valid request
with the same result afterwards. A failure lists every offending case, so one run shows them all.
"""

from __future__ import annotations

import copy
import csv
import datetime
import io
import json
import random
import re
import struct
import zlib
from typing import Any, Callable

import pytest
from served_projects import module_isolation, training_records
from served_projects import make_served_project

CASES = 12
HEADER = "Inference-Header-Content-Length"


# ---- module projects and apps -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory):
    from mlopsctl.config import load_settings
    from mlopsctl.serving.app import create_app
    from mlopsctl.store import db

    root = tmp_path_factory.mktemp("serving-fuzz")
    out: dict[str, Any] = {}
    with module_isolation(root):
        for key, example, target, params in (("bc", "breast-cancer", "diagnosis", "{ n_estimators = 10 }"),
                                             ("ch", "churn", "churned", "{ max_iter = 20 }")):
            project = make_served_project(root, example, key, params)
            app = create_app(load_settings({}, {}, project), f"{key}@production", watch=False)
            rows = training_records(project, target, 3, complete=True)
            assert len(rows) == 3, "no complete rows"
            out[key] = (app, rows)
    yield out
    for app, _ in out.values():
        st = app.extensions["mlopsctl"]
        if st.predlog is not None:
            st.predlog.close()
    db.close_all()


# ---- valid requests -----------------------------------------------------------------------------------

def _valid_json(route: str, app, rows: list[dict[str, Any]], rng: random.Random) -> Any:
    served = app.extensions["mlopsctl"].model
    names = served.contract.feature_names
    rows = rows[:rng.randint(1, len(rows))]
    if route == "predict":
        return {"records": copy.deepcopy(rows)}
    if route == "invocations":
        matrix = [[r[n] for n in names] for r in rows]
        return rng.choice([
            {"dataframe_split": {"columns": names, "data": matrix}},
            {"dataframe_records": copy.deepcopy(rows)},
            {"instances": copy.deepcopy(rows)},
            {"instances": matrix},
            {"inputs": {n: [r[n] for r in rows] for n in names}},
            {"inputs": matrix},
        ])
    inputs = []
    for meta in served.inputs:
        col = served.column_by_input[meta["name"]]
        inputs.append({"name": meta["name"], "datatype": meta["datatype"], "shape": [len(rows), 1],
                       "data": [[r[col]] for r in rows]})
    body: dict[str, Any] = {"id": "fuzz", "inputs": inputs}
    if rng.random() < 0.5:
        body["outputs"] = [{"name": "probabilities"}, {"name": "label", "parameters": {"binary_data": False}}]
    return body


def _binary_v2(app, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[bytes]]:
    served = app.extensions["mlopsctl"].model
    inputs, blobs = [], []
    for meta in served.inputs:
        values = [r[served.column_by_input[meta["name"]]] for r in rows]
        if meta["datatype"] == "BYTES":
            blob = b"".join(struct.pack("<I", len(str(v).encode())) + str(v).encode() for v in values)
        else:
            blob = struct.pack(f"<{len(values)}f", *[float(v) for v in values])
        inputs.append({"name": meta["name"], "datatype": meta["datatype"], "shape": [len(rows), 1],
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    return {"inputs": inputs}, blobs


# ---- damage -------------------------------------------------------------------------------------------

Case = tuple[str, bytes, dict[str, str]]  # (label, body, headers)
JUNK = [None, True, False, 0, -1, 1.5, -0.0, "", "x", "NaN", "1e999", [], {}, [None], [[]], {"a": 1}, [1, [2, [3]]],
        2**70, -(2**70), 1e308, "\u0000", "é", {"name": "x"}, [{"x": 1}]]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _replace(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False).encode()


def random_bytes(rng, body, ctx) -> Case:
    data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
    if rng.random() < 0.3:
        data = b"{" + data
    return "random bytes", data, {}


def truncated(rng, body, ctx) -> Case:
    raw = _dump(body)
    cut = rng.randint(1, len(raw) - 1)
    return f"truncated at {cut}/{len(raw)}", raw[:cut], {}


def deep_nesting(rng, body, ctx) -> Case:
    depth = rng.choice([64, 600, 1023, 1025, 5000, 100_000])
    inner = rng.choice(["[", '{"a":'])
    close = "]" if inner == "[" else "}"
    nest = inner * depth + "1" + close * depth
    where = rng.choice(["top", "value"])
    if where == "top":
        return f"nesting {depth} at top", nest.encode(), {}
    paths = [p for p in _paths(body) if p]
    path = rng.choice(paths)
    text = _dump(_replace(copy.deepcopy(body), path, "__HERE__")).replace(b'"__HERE__"', nest.encode())
    return f"nesting {depth} at {path}", text, {}


NUM = re.compile(rb"(?<![\w.\"])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.\"])")


def _sub_numbers(rng, raw: bytes, pool: list[bytes], k: int) -> tuple[bytes, list[bytes]]:
    spans = [m.span() for m in NUM.finditer(raw)]
    chosen = sorted(rng.sample(spans, min(k, len(spans))), reverse=True)
    used = []
    for a, b in chosen:
        token = rng.choice(pool)
        used.append(token)
        raw = raw[:a] + token + raw[b:]
    return raw, used


def huge_numbers(rng, body, ctx) -> Case:
    pool = [b"1e308", b"-1e308", b"1e39", b"-3.5e38", b"3.4028236e38", b"123456789012345678901234567890",
            b"18446744073709551616", b"-9223372036854775809", b"9223372036854775807", b"1e-400", b"4.9e-324",
            b"1e400", b"-1e400", b"0e99999", b"1" + b"0" * 400]
    raw, used = _sub_numbers(rng, _dump(body), pool, rng.randint(1, 4))
    return f"huge numbers {b' '.join(used).decode()[:80]}", raw, {}


def nan_inf(rng, body, ctx) -> Case:
    pool = [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"-inf", b"+1", b"0x10", b"01", b".5", b"1.", b"1e"]
    raw, used = _sub_numbers(rng, _dump(body), pool, rng.randint(1, 3))
    return f"literals {b' '.join(used).decode()}", raw, {}


def wrong_types(rng, body, ctx) -> Case:
    mutated = copy.deepcopy(body)
    labels = []
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(mutated))
        value = copy.deepcopy(rng.choice(JUNK))
        if rng.random() < 0.2 and path:  # drop or rename a key instead
            parent = mutated
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                v = parent.pop(path[-1])
                if rng.random() < 0.5:
                    parent[str(path[-1]).upper()] = v
                labels.append(f"dropped {path}")
                continue
        mutated = _replace(mutated, path, value)
        labels.append(f"{path}={value!r:.40}")
    return "wrong types " + "; ".join(labels), _dump(mutated), {}


def strings_for_lists(rng, body, ctx) -> Case:
    mutated = copy.deepcopy(body)
    lists = [p for p in _paths(mutated) if isinstance(_get(mutated, p), list)]
    path = rng.choice(lists)
    value = rng.choice(["", "abc", json.dumps(_get(mutated, path)), "[1, 2]", "1,2,3"])
    return f"string at {path}", _dump(_replace(mutated, path, value)), {}


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def non_utf8(rng, body, ctx) -> Case:
    raw = _dump(body)
    kind = rng.choice(["string", "latin-1", "utf-16", "bom", "lone-surrogate", "overlong"])
    if kind == "string":
        strings = [m.span() for m in re.finditer(rb'"[^"]*"', raw)]
        a, b = rng.choice(strings)
        return "invalid UTF-8 in a string", raw[:a] + b'"\xff\xfe\xc3"' + raw[b:], {}
    if kind == "latin-1":
        return "latin-1 body", json.dumps(body, ensure_ascii=False).replace('"', '"é', 1).encode("latin-1"), {}
    if kind == "utf-16":
        return "UTF-16 body", json.dumps(body).encode("utf-16"), {}
    if kind == "bom":
        return "UTF-8 BOM", b"\xef\xbb\xbf" + raw, {}
    if kind == "lone-surrogate":
        return "escaped lone surrogate", raw.replace(b'"', b'"\\ud800', 1), {}
    return "overlong encoding", raw.replace(b'"', b'"\xc0\xaf', 1), {}


def content_types(rng, body, ctx) -> Case:
    ctype = rng.choice(["", "application/json; charset=utf-16", "text/csv; header=present", "application/JSON",
                        "APPLICATION/JSON; CHARSET=UTF-8", "multipart/form-data; boundary=x", "application/json;;",
                        "application/json; charset", 'application/json; charset="utf-8"', "text/csv",
                        "application/vnd.apache.parquet", "*/*", "application/json; charset=utf-8; q=1",
                        "".join(rng.choice("abc/;= -") for _ in range(rng.randint(1, 20)))])
    return f"Content-Type {ctype!r}", _dump(body), {"Content-Type": ctype}


def tables(rng, body, ctx) -> Case:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ctx["names"]
    kind = rng.choice(["csv-cells", "csv-ragged", "csv-bytes", "csv-quotes", "parquet-bytes", "parquet-types"])
    if kind.startswith("csv"):
        cells = [rng.choice(JUNK + ["", "2020-01-01", "12:00", "1e400", "true", "-", "\"", "NaN", "inf"]) for _ in names]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        if kind == "csv-cells":
            w.writerow(["" if c is None else c for c in cells])
        elif kind == "csv-ragged":
            w.writerow(["1"] * rng.randint(0, len(names) + 3))
        data = buf.getvalue().encode()
        if kind == "csv-bytes":
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        elif kind == "csv-quotes":
            data = (",".join(names) + '\n"' + ",".join("1" for _ in names) + "\n").encode()
        return kind, data, {"Content-Type": "text/csv"}
    if kind == "parquet-bytes":
        data = b"PAR1" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) + b"PAR1"
        return kind, data, {"Content-Type": "application/vnd.apache.parquet"}
    columns = {}
    for n in names:
        columns[n] = rng.choice([
            pa.array([[1.0, 2.0]]), pa.array([{"a": 1}]), pa.array([None], pa.float64()), pa.array([b"\xff"]),
            pa.array([datetime.date(2020, 1, 1)]), pa.array([1.5]), pa.array(["x"]), pa.array([True]),
            pa.array([10**18]), pa.array([None], pa.null()),
        ])
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return "parquet with " + ", ".join(str(c.type) for c in columns.values())[:120], buf.getvalue(), \
        {"Content-Type": "application/vnd.apache.parquet"}


def shapes(rng, body, ctx) -> Case:
    mutated = copy.deepcopy(body)
    labels = []
    for _ in range(rng.randint(1, 3)):
        inp = rng.choice(mutated["inputs"])
        shape = rng.choice([[-1], [-3, 1], [0], [0, 1], [2**31], [2**32, 2**32], [2**63], [2**64], [2**64 + 1],
                            [2**62, 4], [10**30, 1], [1.0], [True], ["3"], [None], [], [[3]], "3", 3, None,
                            [3, 1, 1], [1, 3], [3, 0], [1] * 70, [len(ctx["rows"]) + 1, 1]])
        inp["shape"] = shape
        labels.append(f"{inp['name']} shape {shape!r:.40}")
    return "; ".join(labels), _dump(mutated), {}


def binary_lies(rng, body, ctx) -> Case:
    header, blobs = _binary_v2(ctx["app"], ctx["rows"])
    kind = rng.choice(["header-length", "size", "prefix", "trailing", "missing", "datatype", "both"])
    label = kind
    if kind == "size":
        inp = rng.choice(header["inputs"])
        inp["parameters"]["binary_data_size"] = rng.choice(
            [0, -1, 1, 3, inp["parameters"]["binary_data_size"] + 1, 2**63, 10**30, "8", 8.0, True, None, [4], {}])
        label = f"binary_data_size {inp['parameters']['binary_data_size']!r}"
    elif kind == "prefix":
        i = rng.randrange(len(blobs))
        blob = bytearray(blobs[i])
        pos = rng.randrange(max(1, len(blob) - 3))
        blob[pos:pos + 4] = struct.pack("<I", rng.choice([0, 1, 2**31, 2**32 - 1, len(blob)]))[:len(blob[pos:pos + 4])]
        blobs[i] = bytes(blob)
        label = f"bytes {pos}..{pos + 4} of input {i} rewritten"
    elif kind == "trailing":
        blobs.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))))
    elif kind == "missing":
        blobs[-1] = blobs[-1][: rng.randrange(len(blobs[-1]))]
    elif kind == "datatype":
        inp = rng.choice(header["inputs"])
        inp["datatype"] = rng.choice(["BOOL", "UINT8", "INT64", "FP16", "FP64", "BYTES", "BF16", "UINT64"])
        label = f"{inp['name']} re-typed {inp['datatype']}"
    elif kind == "both":
        inp = rng.choice(header["inputs"])
        inp["data"] = [1.0] * len(ctx["rows"])
    head = _dump(header)
    n = len(head)
    lie = str(n)
    if kind == "header-length" or rng.random() < 0.2:
        lie = rng.choice([str(n + 1), str(n - 1), str(n + 7), "0", "-1", str(10**12), "abc", "", " 12", "1e3",
                          f"{n}.0", str(2**64), "\u0663"])
        label += f" header length {lie!r} (true {n})"
    return label, head + b"".join(blobs), {HEADER: lie}


COMMON = [random_bytes, truncated, deep_nesting, huge_numbers, nan_inf, wrong_types, strings_for_lists, non_utf8]
DAMAGE: dict[str, list[Callable]] = {
    "predict": COMMON,
    "invocations": COMMON + [content_types, tables],
    "v2": COMMON + [shapes, binary_lies],
}


# ---- protocol shapes ----------------------------------------------------------------------------------

def _shape_problem(route: str, r) -> str | None:
    """None when the answer is < 500 and in the route's protocol shape; else what is wrong."""
    if r.status_code >= 500:
        return f"{r.status_code} {r.data[:200]!r}"
    ctype = r.headers.get("Content-Type", "")
    if route == "v2" and r.status_code == 200 and ctype == "application/octet-stream":
        n = int(r.headers[HEADER])
        body = json.loads(r.data[:n])
        return None if isinstance(body.get("outputs"), list) else f"binary answer without outputs: {body!r:.200}"
    if ctype != "application/json":
        return f"{r.status_code} with Content-Type {ctype!r}: {r.data[:200]!r}"
    try:
        body = json.loads(r.data)
    except ValueError:
        return f"{r.status_code} body is not JSON: {r.data[:200]!r}"
    if r.status_code == 200:
        key = "outputs" if route == "v2" else "predictions"
        return None if isinstance(body, dict) and isinstance(body.get(key), list) else f"200 without {key}: {body!r:.200}"
    if not 400 <= r.status_code < 500:
        return f"unexpected status {r.status_code}: {body!r:.200}"
    keys = {"predict": {"error", "message", "request_id"}, "invocations": {"error_code", "message"}, "v2": {"error"}}[route]
    if not isinstance(body, dict) or set(body) != keys or not all(isinstance(v, str) and v for v in body.values()):
        return f"{r.status_code} body not in the {route} error shape: {body!r:.200}"
    return None


# ---- the pass -----------------------------------------------------------------------------------------

PARAMS = [(route, fn.__name__, key) for route, fns in DAMAGE.items() for fn in fns for key in ("bc", "ch")]


@pytest.mark.parametrize("route, damage, key", PARAMS, ids=[f"{r}-{d}-{k}" for r, d, k in PARAMS])
def test_fuzz_never_5xx(apps, route, damage, key):
    app, rows = apps[key]
    client = app.test_client()
    fn = next(f for f in DAMAGE[route] if f.__name__ == damage)
    rng = random.Random(zlib.crc32(f"{route}-{damage}-{key}".encode()))
    ctx = {"app": app, "rows": rows, "names": app.extensions["mlopsctl"].model.contract.feature_names}
    paths = {"predict": ["/predict"], "invocations": ["/invocations"],
             "v2": [f"/v2/models/{key}/infer", f"/v2/models/{key}/versions/1/infer"]}[route]

    def valid_request():
        body = _valid_json(route, app, rows, random.Random(0))
        return client.post(paths[0], data=_dump(body), headers={"Content-Type": "application/json"})

    before = valid_request()
    assert before.status_code == 200, before.data[:300]

    problems = []
    for i in range(CASES):
        body = _valid_json(route, app, rows, rng)
        label, data, headers = fn(rng, body, ctx)
        if route == "invocations" and "Content-Type" not in headers and rng.random() < 0.8:
            headers = {**headers, "Content-Type": "application/json"}
        path = rng.choice(paths)
        r = client.post(path, data=data, headers=headers)
        problem = _shape_problem(route, r)
        if problem:
            problems.append(f"case {i} ({label}) on {path}: {problem}")
    assert problems == [], f"{len(problems)} of {CASES} cases failed:\n" + "\n".join(problems)

    after = valid_request()
    assert after.status_code == 200
    strip = ("request_id", "id")
    assert {k: v for k, v in after.get_json().items() if k not in strip} == \
        {k: v for k, v in before.get_json().items() if k not in strip}
