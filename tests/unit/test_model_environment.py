"""The Triton model refuses to load where its python backend cannot answer (numpy 2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stream.settings import PROJECT_ROOT

TEMPLATE = PROJECT_ROOT / "trainer" / "triton_model.py"
VERSIONS = sorted((PROJECT_ROOT / "model_repo" / "clickscore").glob("*/model.py"))


def test_numpy_2_is_refused_with_a_clear_error() -> None:
    from trainer.triton_model import check_numpy

    check_numpy("1.26.4")
    with pytest.raises(RuntimeError, match=r"numpy 2\.5\.0 .*numpy<2"):
        check_numpy("2.5.0")


def _initialize_calls_check_numpy(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "initialize":
            first = node.body[0]
            return (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Call)
                and getattr(first.value.func, "id", None) == "check_numpy"
            )
    return False


def test_the_served_version_and_the_exported_template_check_first() -> None:
    latest = max(VERSIONS, key=lambda p: int(p.parent.name))
    for path in (TEMPLATE, latest):
        assert _initialize_calls_check_numpy(path), f"{path} loads without checking numpy"
