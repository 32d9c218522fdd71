"""Search spaces: ``NAME=SPEC`` strings, the default space of each model family, Optuna distributions.

A SPEC is one of::

    int:LOW..HIGH[:log][:step=S]      int:50..500, int:1..64:log, int:0..100:step=10
    float:LOW..HIGH[:log][:step=S]    float:0.01..0.3:log, float:0.5..1.0:step=0.1
    choice:A,B,...                     choice:gini,entropy, choice:none,4,8,16 (values read like --param values)

``Param.spec`` writes the canonical text back, so a space round-trips through the store and Katib files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlopsctl.common import parse_value
from mlopsctl.errors import InvalidInputError

KINDS = ("int", "float", "choice")
SYNTAX = "int:LOW..HIGH[:log][:step=S], float:LOW..HIGH[:log][:step=S] or choice:A,B,C"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | choice
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(value_text(c) for c in self.choices)
        out = f"{self.kind}:{value_text(self.low)}..{value_text(self.high)}"
        if self.log:
            out += ":log"
        if self.step is not None:
            out += f":step={value_text(self.step)}"
        return out

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this space (the baseline trial is enqueued only if every one is)."""
        if self.kind == "choice":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return math.isclose(k, round(k), abs_tol=1e-9)

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler (a float range needs a step)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "float" and self.step is None:
            raise InvalidInputError(
                f"the grid sampler needs a step for float parameter {self.name!r} ({self.spec}:step=...) or a "
                "choice; or use another sampler.")
        step = self.step or 1
        n = int(round((self.high - self.low) / step)) + 1
        values = [self.low + i * step for i in range(n)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def value_text(v: Any) -> str:
    """A bound or choice as the search-space syntax and Katib's feasibleSpace write it."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _bad(name: str, text: str, why: str) -> InvalidInputError:
    return InvalidInputError(f"search space {name}={text!r} {why}; use {SYNTAX} (e.g. n_estimators=int:50..500).")


def parse_spec(name: str, text: str) -> Param:
    """One SPEC string as a Param; a one-line InvalidInputError says what is wrong."""
    text = str(text).strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        raise _bad(name, text, "does not start with int:, float: or choice:")
    if kind == "choice":
        values = tuple(parse_value(v) for v in rest.split(",")) if rest.strip() else ()
        if not values or any(isinstance(v, str) and not v for v in values):
            raise _bad(name, text, "has an empty choice")
        if any(isinstance(v, (list, dict)) for v in values):
            raise _bad(name, text, "has a list or table among its choices (only numbers, text, true/false, none)")
        if len({(type(v), v) for v in values}) != len(values):
            raise _bad(name, text, "lists a choice twice")
        return Param(name, kind, choices=values)
    bounds, *options = rest.split(":")
    low_text, dots, high_text = bounds.partition("..")
    number = int if kind == "int" else float
    try:
        if not dots:
            raise ValueError
        low, high = number(low_text.strip()), number(high_text.strip())
    except ValueError:
        raise _bad(name, text, f"needs {kind} bounds as LOW..HIGH") from None
    log, step = False, None
    for opt in options:
        opt = opt.strip()
        if opt == "log":
            log = True
        elif opt.startswith("step="):
            try:
                step = number(opt[5:])
            except ValueError:
                raise _bad(name, text, f"has a step that is not an {kind}") from None
            if step <= 0:
                raise _bad(name, text, "has a step that is not above 0")
        else:
            raise _bad(name, text, f"has an unknown option {opt!r} (log or step=S)")
    if not low < high:
        raise _bad(name, text, "needs LOW below HIGH")
    if log and low <= 0:
        raise _bad(name, text, "is on a log scale, which needs LOW above 0")
    if log and step is not None:
        raise _bad(name, text, "has both log and step, which Optuna does not combine")
    return Param(name, kind, low, high, log, step)


def parse_space(specs: dict[str, str]) -> dict[str, Param]:
    return {str(name): parse_spec(str(name), spec) for name, spec in specs.items()}


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["n_estimators=int:50..500", ...]`` (the ``--space`` flags) -> ``{"n_estimators": "int:50..500"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidInputError(f"--space {item!r} must look like NAME=SPEC, e.g. --space n_estimators=int:50..500.")
        if name in out:
            raise InvalidInputError(f"--space names {name!r} twice; give each parameter once.")
        parse_spec(name, spec)
        out[name] = spec.strip()
    return out


def as_specs(space: dict[str, Param]) -> dict[str, str]:
    return {name: p.spec for name, p in space.items()}


def baseline(space: dict[str, Param], params: dict[str, Any]) -> dict[str, Any] | None:
    """The model's current values of the searched parameters, if every one is a point of the space (then it
    is worth a trial: the search can only match or beat it); else None."""
    point = {name: params.get(name) for name in space}
    return point if all(p.contains(point[name]) for name, p in space.items()) else None


def grid_size(space: dict[str, Param]) -> int:
    return math.prod(len(p.grid()) for p in space.values())


# The default space of each model family, keyed by top-level package and class name. Each range holds the
# estimator's own default (except XGBoost's, whose defaults are None), so trial 0 can be the model as it is.
_FOREST = {"n_estimators": "int:50..400:log", "max_depth": "choice:none,4,8,16,32",
           "min_samples_leaf": "int:1..20:log", "max_features": "choice:sqrt,log2,0.5,1.0"}
_SKL_GB = {"n_estimators": "int:50..400:log", "learning_rate": "float:0.01..0.3:log", "max_depth": "int:2..6",
           "subsample": "float:0.5..1.0"}
_HGB = {"max_iter": "int:50..400:log", "learning_rate": "float:0.01..0.3:log", "max_leaf_nodes": "int:8..64:log",
        "min_samples_leaf": "int:5..100:log"}
_TREE = {"max_depth": "choice:none,2,4,6,8,12,16", "min_samples_leaf": "int:1..50:log"}
_KNN = {"n_neighbors": "int:1..50:log", "weights": "choice:uniform,distance"}
_LGBM = {"n_estimators": "int:50..400:log", "learning_rate": "float:0.01..0.3:log", "num_leaves": "int:8..128:log",
         "min_child_samples": "int:5..100:log", "colsample_bytree": "float:0.5..1.0"}
_XGB = {"n_estimators": "int:50..400:log", "learning_rate": "float:0.01..0.3:log", "max_depth": "int:2..10",
        "subsample": "float:0.5..1.0", "min_child_weight": "float:0.5..10:log"}

DEFAULT_SPACES: dict[str, dict[str, str]] = {
    "sklearn.RandomForestClassifier": _FOREST, "sklearn.RandomForestRegressor": _FOREST,
    "sklearn.ExtraTreesClassifier": _FOREST, "sklearn.ExtraTreesRegressor": _FOREST,
    "sklearn.GradientBoostingClassifier": _SKL_GB, "sklearn.GradientBoostingRegressor": _SKL_GB,
    "sklearn.HistGradientBoostingClassifier": _HGB, "sklearn.HistGradientBoostingRegressor": _HGB,
    "sklearn.DecisionTreeClassifier": {**_TREE, "criterion": "choice:gini,entropy,log_loss"},
    "sklearn.DecisionTreeRegressor": {**_TREE, "max_features": "choice:none,sqrt,0.5"},
    "sklearn.LogisticRegression": {"C": "float:0.001..100:log"},
    "sklearn.Ridge": {"alpha": "float:0.001..100:log"},
    "sklearn.SVC": {"C": "float:0.01..100:log", "gamma": "choice:scale,auto"},
    "sklearn.SVR": {"C": "float:0.01..100:log", "epsilon": "float:0.01..1:log", "gamma": "choice:scale,auto"},
    "sklearn.KNeighborsClassifier": _KNN, "sklearn.KNeighborsRegressor": _KNN,
    "lightgbm.LGBMClassifier": _LGBM, "lightgbm.LGBMRegressor": _LGBM,
    "xgboost.XGBClassifier": _XGB, "xgboost.XGBRegressor": _XGB,
}


def family(class_path: str) -> str:
    """``sklearn.ensemble._forest.RandomForestClassifier`` -> ``sklearn.RandomForestClassifier``."""
    return f"{class_path.split('.', 1)[0]}.{class_path.rsplit('.', 1)[-1]}"


def default_space(class_path: str) -> dict[str, str]:
    found = DEFAULT_SPACES.get(family(class_path))
    if found is None:
        known = ", ".join(sorted(k.rsplit(".", 1)[1] for k in DEFAULT_SPACES))
        raise InvalidInputError(
            f"there is no default search space for {class_path}; give one with --space NAME=SPEC (or tune.space), "
            f"or tune one of: {known}.")
    return dict(found)
