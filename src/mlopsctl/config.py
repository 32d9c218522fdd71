"""Settings, merged in one place: CLI flag > ``MLOPS_*`` environment > ``.mlops.toml`` > defaults.

The schema is the dataclasses below; every key has an ``MLOPS_<SECTION>_<KEY>`` variable. Unknown keys
and wrong types raise :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from mlopsctl.config_checks import ENV_PREFIX, check_ranges, check_steps
from mlopsctl.errors import ConfigError

CONFIG_FILE = ".mlops.toml"


def _opt(default: Any, doc: str, choices: tuple | None = None, path: bool = False):
    meta = {"doc": doc, "choices": choices, "path": path}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StoreSettings:
    url: str = _opt("sqlite:///.mlops/mlops.db", "any SQLAlchemy URL; relative SQLite paths are relative to the project")
    artifacts: str = _opt(".mlops/artifacts", "folder of content-addressed artifact blobs", path=True)
    busy_timeout_ms: int = _opt(30000, "how long a writer waits for a SQLite lock before failing")


@dataclass(frozen=True)
class DataSettings:
    path: str = _opt("data/train.csv", "the training data `mlopsctl train` uses without --data", path=True)
    target: str = _opt("label", "the column to predict")
    task: str = _opt("auto", "the learning task", choices=("auto", "classification", "regression"))
    name: str = _opt("", "dataset name in the store (default: the file name without extension)")
    exclude: list = _opt([], "columns that are not features (ids, free text, dates), e.g. [\"customer_id\"]")
    delimiter: str = _opt("auto", "CSV field delimiter: auto (found in the header: , ; tab or |) or one character")
    decimal: str = _opt(".", "decimal mark of numbers in CSV files", choices=(".", ","))


@dataclass(frozen=True)
class TrainSettings:
    model: str = _opt("auto", "estimator class path; auto: a random forest classifier or regressor by the task")
    params: dict = _opt({}, "estimator parameters, e.g. { n_estimators = 200 }")
    test_size: float = _opt(0.2, "held-out fraction (0 < test_size < 1)")
    seed: int = _opt(42, "seed for the split and the estimator")
    metric: str = _opt(
        "auto", "the gate's primary metric (roc_auc / r2 when auto)",
        choices=("auto", "accuracy", "f1_macro", "roc_auc", "log_loss", "rmse", "mae", "r2"),
    )
    experiment: str = _opt("default", "experiment that runs are recorded under")
    reference_rows: int = _opt(1000, "training rows kept in the contract as the monitoring reference")
    max_categories: int = _opt(50, "a categorical column is one-hot encoded on at most this many of its most frequent values")
    categorical: str = _opt("auto", "how categorical columns reach the model: one-hot, or native (LightGBM/XGBoost split on "
                                    "category codes); auto: native for LightGBM/XGBoost, one-hot otherwise",
                            choices=("auto", "onehot", "native"))
    early_stopping_rounds: int = _opt(0, "LightGBM/XGBoost: stop boosting after this many rounds without improvement on a "
                                         "validation slice of the training split (0: off)")


@dataclass(frozen=True)
class RegistrySettings:
    model_name: str = _opt("my-model", "what `watch` registers under")
    alias: str = _opt("production", "the alias promote, watch and serve default to")
    min_delta: float = _opt(0.0, "how much worse than the alias holder a candidate may score and still pass")


@dataclass(frozen=True)
class ServeSettings:
    host: str = _opt("127.0.0.1", "address to bind")
    port: int = _opt(8080, "port to bind")
    device: str = _opt("cpu", "inference device", choices=("cpu", "cuda", "auto"))
    workers: int = _opt(2, "server worker processes")
    server: str = _opt("granian", "HTTP front: granian (Rust, keep-alive, the fastest here) or gunicorn", choices=("granian", "gunicorn"))
    threads: int = _opt(1, "Python threads per worker running the app; on gunicorn 1 = sync workers (the lowest p99), N > 1 = gthread workers with keep-alive")
    token: str = _opt("", "bearer token required on prediction and admin endpoints (empty: none)")
    dev: bool = _opt(False, "use Flask's development server instead of serve.server")
    unknown_category: str = _opt("accept", "a category not seen in training", choices=("accept", "reject"))
    out_of_range: str = _opt("flag", "a numeric value far outside the training range", choices=("accept", "flag", "reject"))
    range_tolerance: float = _opt(1.0, "how far outside [min, max] is 'far', in multiples of the training span")
    unseen_nulls: str = _opt("reject", "a null in a column that had none in training", choices=("accept", "reject"))
    extra_columns: str = _opt("reject", "a column the model does not take", choices=("ignore", "reject"))
    max_batch_rows: int = _opt(100_000, "most rows one request may carry")
    max_body_mb: float = _opt(32.0, "largest request body accepted, in MiB (larger: 413)")
    reload_interval: float = _opt(1.0, "seconds between checks of the served alias (hot reload)")
    log_predictions: bool = _opt(True, "write every prediction to the store's prediction log")
    log_queue_size: int = _opt(10_000, "prediction-log queue bound; overflow is counted in /metrics")
    log_flush_seconds: float = _opt(1.0, "each worker writes its prediction log once per this many seconds")


@dataclass(frozen=True)
class WatchSettings:
    path: str = _opt("data/incoming", "folder watched for new data files", path=True)
    mode: str = _opt("append", "how a new file joins the training data", choices=("append", "replace"))
    debounce_seconds: float = _opt(2.0, "a file is read once its size and mtime are stable this long")
    auto_promote: bool = _opt(True, "promote a retrained model when it passes the gate")
    quarantine: str = _opt("data/quarantine", "where rejected files go, each with <name>.reason.txt", path=True)
    processed: str = _opt("data/processed", "where accepted (and duplicate) files are moved", path=True)
    window_rows: int = _opt(0, "train on at most the last N rows after appending (0: all)")
    min_rows: int = _opt(10, "fewest rows a new file must have")
    max_null_increase: float = _opt(0.2, "how much a column's null rate may exceed the training data's")
    every: str = _opt("", "also retrain on a schedule, e.g. 6h, 30m, 1d (empty: only on new files)")
    pipeline: bool = _opt(False, "run the project's pipeline ([pipeline.steps]) instead of a bare train when files land")
    tune_trials: int = _opt(0, "retrain with a small tune of this many trials instead of a plain train (0: plain train)")


@dataclass(frozen=True)
class MonitorSettings:
    drift_share: float = _opt(0.5, "the data set has drifted when at least this share of columns drift")
    window: str = _opt("24h", "default window of logged predictions for drift (e.g. 24h, 7d)")
    stattest: dict = _opt({}, "per-column method: ks, chisquare, ztest, wasserstein, jensenshannon or psi")
    threshold: dict = _opt({}, "per-column threshold for that method (p-value, distance or PSI)")
    check_every: str = _opt("10m", "how often `watch --on-drift` checks drift")
    min_rows: int = _opt(100, "fewest logged rows for a drift check")
    min_labels: int = _opt(50, "fewest labelled predictions for a drift-triggered retrain")


@dataclass(frozen=True)
class TuneSettings:
    space: dict = _opt({}, "search space, e.g. { n_estimators = \"int:50..500:log\", criterion = \"choice:gini,entropy\" } "
                           "(empty: the model family's default space)")
    trials: int = _opt(30, "finished (complete or pruned) trials a study runs to")
    jobs: int = _opt(1, "worker processes on this machine")
    sampler: str = _opt("tpe", "how trials are chosen", choices=("tpe", "random", "grid", "cmaes"))
    pruner: str = _opt("median", "stop a trial whose running CV mean is below the median of earlier trials at the same fold",
                       choices=("median", "none"))
    cv: int = _opt(5, "folds of the cross-validation on the training split")
    timeout: str = _opt("", "stop starting trials after this long, e.g. 30m, 2h (empty: no limit)")
    max_failed: int = _opt(10, "a study stops with an error after this many failed trials (Katib's maxFailedTrialCount)")


@dataclass(frozen=True)
class UiSettings:
    host: str = _opt("127.0.0.1", "address the dashboard binds (any other than loopback needs ui.token)")
    port: int = _opt(5000, "port the dashboard binds")
    token: str = _opt("", "token that enables promote and rollback in the dashboard (and guards reading it off the loopback); empty: read-only")


@dataclass(frozen=True)
class PipelineSettings:
    steps: dict = _opt({}, "the pipeline's steps, one table each: [pipeline.steps.NAME] (keys: STEP_KEYS)")


SECTIONS: dict[str, type] = {
    "store": StoreSettings,
    "data": DataSettings,
    "train": TrainSettings,
    "registry": RegistrySettings,
    "serve": ServeSettings,
    "watch": WatchSettings,
    "monitor": MonitorSettings,
    "tune": TuneSettings,
    "ui": UiSettings,
    "pipeline": PipelineSettings,
}


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    config_file: Path | None
    store: StoreSettings = field(default_factory=StoreSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)

    def resolve(self, value: str | os.PathLike) -> Path:
        """A path from the config or a flag, made absolute against the project directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.project_dir / p

    @property
    def artifacts_dir(self) -> Path:
        return self.resolve(self.store.artifacts)

    @property
    def store_url(self) -> str:
        """``store.url`` with a relative SQLite path made absolute against the project."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith("sqlite:////"):
            rest = url[len(prefix):]
            if rest and rest != ":memory:" and not rest.startswith("file:"):
                return prefix + str(self.resolve(rest))
        return url


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def describe_keys() -> list[tuple[str, Any, str, tuple | None]]:
    """(key, default, doc, choices) for every key; used by docs and `.mlops.toml.example` tests."""
    out = []
    for s, cls in SECTIONS.items():
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            out.append((f"{s}.{f.name}", default, f.metadata["doc"], f.metadata["choices"]))
    return out


def find_project_dir(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` holding ``.mlops.toml``; ``start`` itself if none."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / CONFIG_FILE).is_file():
            return d
    return start


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table",
               list: "a list"}


def _coerce(key: str, value: Any, typ: type, choices: tuple | None, source: str) -> Any:
    """Check (and for strings from env/flags, parse) one value against its declared type."""
    if isinstance(value, str) and typ is not str and source != CONFIG_FILE:
        text = value.strip()
        try:
            if typ is bool:
                low = text.lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = low in ("1", "true", "yes", "on")
            elif typ is int:
                value = int(text)
            elif typ is float:
                value = float(text)
            elif typ is dict:
                value = json.loads(text)
            elif typ is list:  # a JSON list, or comma-separated names: MLOPS_DATA_EXCLUDE=id,signup_date
                value = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"{key} from {source} must be {_TYPE_NAMES[typ]}, got {value!r}.") from None
    ok = (
        isinstance(value, bool) if typ is bool
        else isinstance(value, int) and not isinstance(value, bool) if typ is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float
        else isinstance(value, typ)
    )
    if ok and typ is list:
        ok = all(isinstance(v, str) and v for v in value)
    if not ok:
        raise ConfigError(f"{key} in {source} must be {_TYPE_NAMES[typ]}"
                          + (" of column names" if typ is list else "") + f", got {value!r}.")
    if typ is float:
        value = float(value)
    if choices and value not in choices:
        raise ConfigError(f"{key} in {source} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def _field_types(cls: type) -> dict[str, tuple[type, tuple | None]]:
    hints = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}
    return {f.name: (hints[f.type] if isinstance(f.type, str) else f.type, f.metadata["choices"]) for f in fields(cls)}


def read_config_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix the file or delete it to use defaults.") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}.") from None
    for section, body in data.items():
        if section not in SECTIONS and not isinstance(body, dict):
            owner = next((s for s, cls in SECTIONS.items() if section in {f.name for f in fields(cls)}), None)
            where = f" (it belongs under [{owner}])" if owner else ""
            raise ConfigError(
                f"key {section!r} in {path.name} is outside any section{where}; put keys under a section "
                f"header such as [{owner or 'train'}]."
            )
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section [{section}] in {path.name}; valid sections: {', '.join(SECTIONS)}."
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{section} in {path.name} must be a table like [{section}].")
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    project_dir: Path | None = None,
) -> Settings:
    """Merge defaults, ``.mlops.toml``, ``MLOPS_*`` env and flags (``{"train.seed": 7}``) into Settings.

    ``flags`` values of ``None`` mean "not given" and are ignored.
    """
    env = os.environ if env is None else env
    project_dir = find_project_dir(project_dir) if project_dir is None else Path(project_dir).resolve()
    cfg_path = project_dir / CONFIG_FILE
    layers: list[tuple[str, dict[str, Any]]] = []

    if cfg_path.is_file():
        file_data = read_config_file(cfg_path)
        layers.append((CONFIG_FILE, {f"{s}.{k}": v for s, body in file_data.items() for k, v in body.items()}))
    else:
        cfg_path = None  # type: ignore[assignment]

    valid_env = {ENV_PREFIX + k.replace(".", "_").upper(): k for k in all_keys()}
    env_layer = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in valid_env:
            section = name[len(ENV_PREFIX):].partition("_")[0].lower()
            if section not in SECTIONS:
                continue  # MLOPS_ is a common prefix: MLOPS_VENV, MLOPS_DEBUG... belong to other tools
            known = sorted(v for v in valid_env if v.startswith(f"{ENV_PREFIX}{section.upper()}_"))
            raise ConfigError(  # a known section with an unknown key is a typo
                f"unknown environment variable {name}; the [{section}] variables are: {', '.join(known)}."
            )
        env_layer[valid_env[name]] = value
    layers.append(("the environment", env_layer))
    layers.append(("a command-line flag", {k: v for k, v in (flags or {}).items() if v is not None}))

    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for source, layer in layers:
        for key, value in layer.items():
            section, _, name = key.partition(".")
            types = _field_types(SECTIONS[section]) if section in SECTIONS else {}
            if name not in types:
                raise ConfigError(
                    f"unknown key {key!r} in {source}; valid keys: {', '.join(all_keys())}."
                )
            typ, choices = types[name]
            values[section][name] = _coerce(key, value, typ, choices, source)
            if key == "pipeline.steps":
                check_steps(values[section][name], source)

    sections = {s: cls(**values[s]) for s, cls in SECTIONS.items()}
    settings = Settings(project_dir=project_dir, config_file=cfg_path, **sections)
    check_ranges(settings)
    return settings


# ---- pipeline steps ([pipeline.steps.NAME]) ----------------------------------------------------------------
def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with some keys replaced, e.g. ``with_overrides(s, train={"seed": 1})``."""
    changes = {name: replace(getattr(settings, name), **vals) for name, vals in sections.items()}
    return replace(settings, **changes)
