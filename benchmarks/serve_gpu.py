"""`mlopsctl serve --device cuda|auto` on a real GPU, against `--device cpu` on the same machine (issue 4).

Three steps, because the GPU machine has no network and no skl2onnx:

1. here, ``--prepare DIR``: train, register and promote three projects (breast cancer with the issue's
   100-tree random forest; breast cancer with a 256×256 MLP, whose graph is standard ONNX operators that the
   CUDA provider has kernels for; the mixed-type churn example) and write the request bodies;
2. on the GPU machine, ``--check DIR --out OUT`` (onnxruntime-gpu installed): for each project and device,
   the real ``runtime.build`` (the session the server uses: which provider runs each node, from ONNX Runtime's
   profiler), in-process latency of one row and of 10,000 rows (medians of several rounds), CPU-vs-GPU
   parity on 10,000 rows; then real ``mlopsctl serve`` processes (``--device cpu``, ``cuda``, ``auto``): time to
   ready, the ``/v2/models/NAME`` metadata, one ``/predict`` compared with the CPU server, ``wrk`` at 8
   connections for single rows, 10,000-row requests; and ``--device cuda`` / ``auto`` with the GPU hidden
   (``CUDA_VISIBLE_DEVICES=-1``): the one-line error and the CPU fallback. Results go to ``OUT/gpu.json``;
3. here, ``--write gpu.json``: render them into ``benchmarks/RESULTS.md`` ("Serving on a GPU (issue 4)").

The GPU machine of this workplace reaches no package index: onnxruntime-gpu (its 256 MB wheel cut into pieces
of at most 64 MB, joined and checked against its sha256 there) and the wheels mlopsctl needs beyond what its
image has were carried as files and installed with ``pip install --no-index --no-deps``; mlopsctl itself ran
from the checkout (``PYTHONPATH=src``), wrk from a copied binary. ``benchmarks/gpu/gpu-h100.json`` is the
result rendered in RESULTS.md.

    .venv/bin/python benchmarks/serve_gpu.py --prepare .devcheck/projects
    python3 benchmarks/serve_gpu.py --check .devcheck/projects --out $OUT      # on the GPU machine
    .venv/bin/python benchmarks/serve_gpu.py --write /path/to/gpu.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import HOST, free_port, median, wrk  # noqa: E402

from _common import stop_group, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Serving on a GPU (issue 4)"
FINDINGS = "### Findings"  # hand-written, kept across re-renders
PROJECTS = {  # name: (example, train arguments)
    "bc-rf": ("breast-cancer", []),
    "bc-mlp": ("breast-cancer", ["-m", "sklearn.neural_network.MLPClassifier", "-p", "hidden_layer_sizes=[256,256]",
                                 "-p", "max_iter=300"]),
    "churn": ("churn", []),
}
MODEL = "m"
REF = "m@production"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p.stdout


# ---- 1. prepare (here) --------------------------------------------------------------------------------

def prepare(root: Path) -> None:
    mlopsctl = [sys.executable, "-m", "mlopsctl"]
    root.mkdir(parents=True, exist_ok=True)
    for name, (example, train) in PROJECTS.items():
        d = root / name
        if d.exists():
            import shutil

            shutil.rmtree(d)
        sh([*mlopsctl, "init", d, "--example", example])
        run = json.loads(sh([*mlopsctl, "train", "--json", *train], cwd=d))
        assert run["parity"]["passed"], run["parity"]
        sh([*mlopsctl, "register", str(run["id"]), "--name", MODEL], cwd=d)
        sh([*mlopsctl, "promote", MODEL, "1"], cwd=d)
        if name == "bc-mlp":  # a second version, for the hot reload on the GPU
            run2 = json.loads(sh([*mlopsctl, "train", "--json", "--seed", "7", *train], cwd=d))
            sh([*mlopsctl, "register", str(run2["id"]), "--name", MODEL], cwd=d)
        say(f"prepared {d}: {run['model']} (run {run['id']})")


def bodies(d: Path) -> None:
    """``body1.json`` (one row of the training data) and ``body_big.json`` (10,000 rows), as ``/predict`` takes."""
    import csv

    toml = (d / ".mlops.toml").read_text()
    target = toml.split('target = "', 1)[1].split('"', 1)[0]
    with open(d / "data" / "train.csv", newline="") as f:
        rows = [{k: _value(v) for k, v in r.items() if k != target} for r in csv.DictReader(f)]
    (d / "body1.json").write_text(json.dumps({"records": rows[:1]}))
    (d / "body_big.json").write_text(json.dumps({"records": [rows[i % len(rows)] for i in range(10_000)]}))


def _value(v: str):
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


# ---- 2. check (on the GPU machine) --------------------------------------------------------------------

def inproc(d: Path, device: str) -> dict:
    """The server's own model build on ``device``, then latency and outputs of the raw session."""
    os.chdir(d)
    from mlopsctl.artifacts import ArtifactStore
    from mlopsctl.config import load_settings
    from mlopsctl.registry import parse_ref
    from mlopsctl.serving.runtime import build
    from mlopsctl.store.db import open_store

    settings = load_settings(project_dir=d)
    store = open_store(settings.store_url, settings.store.busy_timeout_ms)
    t0 = time.perf_counter()
    served = build(store, ArtifactStore(settings.artifacts_dir), parse_ref(REF), device, 4)
    build_s = time.perf_counter() - t0
    big = json.loads((d / "body_big.json").read_text())["records"]
    contract = served.contract
    cols = {c: [r.get(c) for r in big] for c in contract.feature_names}
    norm_big = contract.normalize(cols)
    norm_one = contract.normalize({c: v[:1] for c, v in cols.items()})
    scorer = served.scorer
    one, many = [], []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(200):
            scorer.run(norm_one)
        one.append((time.perf_counter() - t) / 200 * 1e3)
    for _ in range(7):
        t = time.perf_counter()
        out = scorer.run(norm_big)
        many.append((time.perf_counter() - t) * 1e3)
    store.dispose()
    return {"provider": served.provider, "placement": served.placement, "node_placement": served.node_placement,
            "session_providers": scorer.session.get_providers(), "build_s": build_s,
            "one_row_ms": median(one), "rows_10k_ms": median(many),
            "outputs": {k: v.tolist() for k, v in out.items()}}


def compare(a: dict, b: dict) -> dict:
    import numpy as np

    res = {}
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype.kind in "fc":
            res[f"{k}_max_abs_diff"] = float(np.max(np.abs(x - y)))
        else:
            res[f"{k}_agreement"] = float(np.mean(x == y))
    return res


def serve(d: Path, device: str, env_extra: dict | None = None, load: bool = True,
          reload_to: tuple[int, ...] = ()) -> dict:
    """A real ``mlopsctl serve`` on ``device``; ``reload_to``: under wrk load, move @production to each of
    these versions in turn (``mlopsctl promote --force``) and count the failed requests across the swaps."""
    port = free_port()
    env = dict(os.environ, **(env_extra or {}))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = d / f"serve-{device}{'-nogpu' if env_extra else ''}.log"
    t0 = time.perf_counter()
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "mlopsctl", "serve", REF, "--host", HOST, "--port", str(port),
                                 "--workers", "2", "--device", device], cwd=d, env=env, stdout=lf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    res: dict = {"device": device}
    try:
        while True:
            if proc.poll() is not None:
                res["exit_code"] = proc.returncode
                res["log"] = log.read_text(errors="replace").strip().splitlines()[-3:]
                return res
            try:
                c = http.client.HTTPConnection(HOST, port, timeout=30)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 120:
                res["error"] = "not ready after 120 s"
                return res
            time.sleep(0.01)
        res["ready_s"] = time.perf_counter() - t0
        c = http.client.HTTPConnection(HOST, port, timeout=60)
        c.request("GET", f"/v2/models/{MODEL}")
        res["metadata"] = json.loads(c.getresponse().read())["parameters"]
        c.request("POST", "/predict", body=(d / "body1.json").read_bytes(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        res["predict_status"], res["predict"] = r.status, json.loads(r.read())
        if reload_to:
            import threading

            out: dict = {}
            loader = threading.Thread(target=lambda: out.update(wrk(f"http://{HOST}:{port}/predict",
                                                                    d / "body1.json", 4 + 3 * len(reload_to))))
            loader.start()
            time.sleep(2)
            for v in reload_to:
                sh([sys.executable, "-m", "mlopsctl", "promote", MODEL, str(v), "--force", "--reason", "gpu reload"],
                   cwd=d, env=env)
                time.sleep(3)
            loader.join()
            res["wrk"] = out
            c = http.client.HTTPConnection(HOST, port, timeout=60)
            c.request("GET", f"/v2/models/{MODEL}")
            res["metadata_after"] = json.loads(c.getresponse().read())
            res["log"] = [ln for ln in log.read_text(errors="replace").splitlines() if "hot reload" in ln]
            return res
        if load:
            wrk(f"http://{HOST}:{port}/predict", d / "body1.json", 2)
            res["wrk"] = wrk(f"http://{HOST}:{port}/predict", d / "body1.json", 5)
            big = (d / "body_big.json").read_bytes()
            times = []
            for _ in range(6):
                t = time.perf_counter()
                c.request("POST", "/predict", body=big, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                times.append(time.perf_counter() - t)
                assert r.status == 200, r.status
            res["rows_10k_s"] = median(times[1:])
        res["log"] = [ln for ln in log.read_text(errors="replace").splitlines() if "serving " in ln or "--device" in ln][:4]
    except Exception as e:  # keep what was measured
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        stop_group(proc)
    return res


def check(root: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "projects": {}}

    def save() -> None:
        (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))

    for name in PROJECTS:
        d = (root / name).resolve()
        bodies(d)
        pr: dict = {}
        result["projects"][name] = pr
        for device in ("cpu", "cuda"):
            say(f"{name}: in-process {device}")
            # a child process each: a CUDA session must not leak into the CPU figures
            code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serve_gpu; "
                    f"print(json.dumps(serve_gpu.inproc(__import__('pathlib').Path({str(d)!r}), {device!r})))")
            try:
                pr[f"inproc_{device}"] = json.loads(sh([sys.executable, "-c", code]).strip().splitlines()[-1])
            except Exception as e:
                pr[f"inproc_{device}"] = {"error": str(e)[-1500:]}
            save()
        a, b = pr["inproc_cpu"].get("outputs"), pr["inproc_cuda"].get("outputs")
        if a and b:
            pr["parity_10k"] = compare(a, b)
        for k in ("inproc_cpu", "inproc_cuda"):
            pr[k].pop("outputs", None)
        for device in ("cpu", "cuda", "auto"):
            say(f"{name}: mlopsctl serve --device {device}")
            pr[f"serve_{device}"] = serve(d, device)
            save()
        if name == "bc-mlp":
            say(f"{name}: hot reload on cuda under load (@production 1 -> 2 -> 1)")
            pr["reload_cuda"] = serve(d, "cuda", reload_to=(2, 1))
            save()
        if name == "bc-rf":
            for device in ("cuda", "auto"):
                say(f"{name}: --device {device} with the GPU hidden")
                pr[f"serve_{device}_nogpu"] = serve(d, device, {"CUDA_VISIBLE_DEVICES": "-1"}, load=False)
                save()
    save()
    say(f"wrote {out / 'gpu.json'}")


def machine() -> dict:
    info = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        info["gpu"] = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).strip()
    except Exception as e:
        info["gpu"] = f"none ({e})"
    import importlib.metadata as md

    for dist in ("onnxruntime-gpu", "onnxruntime", "flask", "gunicorn", "numpy"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return info


# ---- 3. write (here) ----------------------------------------------------------------------------------

def render(res: dict, source: str) -> str:
    m = res["machine"]
    lines = [SECTION, "",
             f"Measured {m['date']} on {m['gpu']}, {m['cores']} CPU cores, Python {m['python']}, "
             f"onnxruntime-gpu {m.get('onnxruntime-gpu', '?')}. Command on that machine: "
             f"`python3 benchmarks/serve_gpu.py --check .devcheck/projects --out $OUT` (projects from "
             f"`--prepare`); this section: `{source}`. Two gunicorn sync workers; `wrk -t2 -c8 -d5s`, single-row "
             "`/predict`, contract checks, logging and metrics on.", ""]
    for name, pr in res["projects"].items():
        lines += [f"### {name}", ""]
        c, g = pr.get("inproc_cpu", {}), pr.get("inproc_cuda", {})
        lines.append(f"- CUDA session: **{g.get('placement', g.get('error', '?'))}**")
        if "parity_10k" in pr:
            lines.append("- CPU vs CUDA outputs on 10,000 rows: " + ", ".join(
                f"{k} {v:.3g}" for k, v in pr["parity_10k"].items()))
        lines += ["", "| | cpu | cuda | cuda / cpu |", "| --- | --- | --- | --- |"]
        for key, label in (("one_row_ms", "session, one row (ms)"), ("rows_10k_ms", "session, 10,000 rows (ms)"),
                           ("build_s", "load + warm-up (s)")):
            if key in c and key in g:
                lines.append(f"| {label} | {c[key]:.3f} | {g[key]:.3f} | {g[key] / c[key]:.2f} |")
        rows = []
        for dev in ("cpu", "cuda", "auto"):
            s = pr.get(f"serve_{dev}", {})
            w = s.get("wrk", {})
            meta = s.get("metadata", {})
            rows.append(f"| `--device {dev}` | {s.get('ready_s', float('nan')):.2f} | {meta.get('execution_provider', s.get('error', s.get('exit_code', '?')))} "
                        f"| {w.get('rps', float('nan')):,.0f} | {w.get('p50_ms', float('nan')):.2f} | "
                        f"{w.get('p99_ms', float('nan')):.2f} | {w.get('non2xx', '?')} | "
                        f"{s.get('rows_10k_s', float('nan')):.3f} |")
        lines += ["", "| server | ready (s) | metadata provider | req/s | p50 ms | p99 ms | non-2xx | 10k rows (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""]
        rl = pr.get("reload_cuda")
        if rl:
            w = rl.get("wrk", {})
            after = rl.get("metadata_after", {})
            when = f" (a later run, {rl['machine']['date']}, on a fresh machine of the same kind)" if "machine" in rl else ""
            lines.append(f"- Hot reload on `--device cuda` under wrk load{when} (@production 1 → 2 → 1 with `mlopsctl "
                         f"promote --force`): {w.get('requests', '?'):,} requests, {w.get('non2xx', '?')} non-2xx, "
                         f"{w.get('socket_errors', '?')} socket errors, p99 {w.get('p99_ms', float('nan')):.2f} ms; "
                         f"{len(rl.get('log', []))} worker swaps logged, e.g. `{(rl.get('log') or [''])[0]}`; "
                         f"serving version {after.get('versions')} on "
                         f"{after.get('parameters', {}).get('execution_provider')} afterwards")
        for dev in ("cuda", "auto"):
            said = [ln for ln in pr.get(f"serve_{dev}", {}).get("log", []) if ln.startswith("--device")]
            if said:
                lines.append(f"- `--device {dev}` said: `{said[0]}`")
        for dev in ("cuda", "auto"):
            s = pr.get(f"serve_{dev}_nogpu")
            if s:
                what = (f"exit {s['exit_code']}: `{s['log'][-1] if s.get('log') else ''}`" if "exit_code" in s
                        else f"served on {s.get('metadata', {}).get('execution_provider')}: `{(s.get('log') or [''])[-1]}`")
                lines.append(f"- GPU hidden (`CUDA_VISIBLE_DEVICES=-1`), `--device {dev}`: {what}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", type=Path)
    ap.add_argument("--check", type=Path)
    ap.add_argument("--out", type=Path, default=Path("gpu-out"))
    ap.add_argument("--write", type=Path, help="gpu.json from --check, rendered into RESULTS.md")
    a = ap.parse_args(argv)
    if a.prepare:
        prepare(a.prepare)
    if a.check:
        check(a.check, a.out)
    if a.write:
        shown = a.write.resolve().relative_to(REPO) if a.write.resolve().is_relative_to(REPO) else a.write
        write_section(SECTION, render(json.loads(a.write.read_text()),
                                      f".venv/bin/python benchmarks/serve_gpu.py --write {shown}"), keep=FINDINGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
