"""The clickscore backend refuses to load where its python backend cannot answer (numpy 2)."""

from __future__ import annotations

import ast

import pytest

from stream.settings import PROJECT_ROOT

BACKEND = PROJECT_ROOT / "stream" / "serving" / "backend.py"


def test_numpy_2_is_refused_with_a_clear_error() -> None:
    from stream.serving.backend import check_numpy

    check_numpy("1.26.4")
    with pytest.raises(RuntimeError, match=r"numpy 2\.5\.0 .*numpy<2"):
        check_numpy("2.5.0")


def test_the_backend_checks_numpy_before_anything_else() -> None:
    tree = ast.parse(BACKEND.read_text())
    [initialize] = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "initialize"
    ]
    first = initialize.body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
    assert getattr(first.value.func, "id", None) == "check_numpy"
