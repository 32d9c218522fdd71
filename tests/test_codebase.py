"""The shape of the code base itself (issue 15): rooms a newcomer can read.

No module under src/ over 400 lines, no function over 60, no class over 300 (Alembic migrations exempt), and
every exception class lives in errors.py. These are checked on the source text, so a change that grows a room
past them fails here, in CI, rather than in a later review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mlopsctl"
MODULES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)
MAX_MODULE, MAX_FUNCTION, MAX_CLASS = 400, 60, 300


def _rel(p: Path) -> str:
    return p.relative_to(SRC.parent).as_posix()


def test_the_source_tree_is_there():
    assert len(MODULES) > 50 and (SRC / "errors.py") in MODULES


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_rooms_stay_small(path: Path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE, f"{_rel(path)} has {len(text.splitlines())} lines"
    too_long = []
    for node in ast.walk(ast.parse(text)):
        size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION:
            too_long.append(f"def {node.name}: {size} lines")
        elif isinstance(node, ast.ClassDef) and size > MAX_CLASS:
            too_long.append(f"class {node.name}: {size} lines")
    assert not too_long, f"{_rel(path)}: {too_long}"


def _exception_classes(path: Path) -> list[str]:
    """Classes defined in the module that are exceptions (imported to ask Python, not guessed from names)."""
    import importlib
    import inspect

    name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    module = importlib.import_module(name[: -len(".__init__")] if name.endswith(".__init__") else name)
    return [n for n, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__]


def test_every_exception_class_is_in_errors_py():
    outside = {_rel(p): _exception_classes(p) for p in MODULES if p.name != "errors.py"}
    assert {k: v for k, v in outside.items() if v} == {}
    assert {"MlopsError", "InvalidInputError", "CorruptArtifactError", "Unauthorized", "RetryPerRow"} <= set(
        _exception_classes(SRC / "errors.py"))
