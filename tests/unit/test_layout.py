"""The folders show the architecture: these import rules keep them true.

- `stream.worker` imports nothing from the demo, the benchmarks, the operator tools or the
  trainer; nor do the contract and the datasets, which both the worker and the trainer use.
- `trainer` imports from `stream` only what a training job needs (see docs/architecture.md).
- No module imports itself back through others (no cycles), lazily imported or not.
- No folder holds more than about a dozen modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from stream.settings import PROJECT_ROOT

PACKAGES = ("stream", "trainer")
TOOLS = ("stream.demo", "stream.bench", "stream.ops", "trainer")
# What the trainer may use of the worker's package, and why (docs/architecture.md):
TRAINER_MAY_IMPORT = (
    "stream.contract",  # events, tokens and states built exactly as the worker builds them
    "stream.datasets",  # public dataset formats and the synthetic generator
    "stream.settings",  # one configuration
    "stream.db",  # the model_versions table the promotion gate writes
    "stream.kafka_security",  # reading recent history from the events topic
    "stream.console",  # progress bars of `clickscore train`
    "stream.scoring",  # the alert rules, which the anomaly threshold is measured beside
    "stream.serving",  # a version as served (ServedVersion, item vocabulary, session kNN)
)
MOST_MODULES_PER_FOLDER = 13


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in (PROJECT_ROOT / package).rglob("*.py")
    }


def _imports(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """Every project module `path` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # `from stream.ops import dlq` names a module; `from stream.ops.dlq import x` not.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                yield target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: set(_imports(path, name, known)) - {name} for name, path in modules.items()}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_worker_contract_and_datasets_import_no_tools() -> None:
    graph = _graph()
    core = ("stream.worker", "stream.scoring", "stream.contract", "stream.datasets")
    broken = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _within(module, core)
        for target in targets
        if _within(target, TOOLS)
    }
    assert not broken


def test_the_trainer_imports_only_what_training_needs() -> None:
    graph = _graph()
    broken = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _within(module, ("trainer",))
        for target in targets
        if _within(target, ("stream",))
        and target != "stream"
        and not _within(target, TRAINER_MAY_IMPORT)
    }
    assert not broken


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            # A package's __init__ is imported on the way to its modules: not an edge back.
            if module.startswith(target + "."):
                continue
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_no_folder_is_crowded() -> None:
    crowded = {
        str(folder.relative_to(PROJECT_ROOT)): count
        for package in PACKAGES
        for folder in [PROJECT_ROOT / package, *(PROJECT_ROOT / package).rglob("*/")]
        if folder.is_dir()
        and (count := len([p for p in folder.glob("*.py") if p.name != "__init__.py"]))
        > MOST_MODULES_PER_FOLDER
    }
    assert not crowded


def test_the_rules_see_real_imports() -> None:
    """The checks above read the tree: a known edge must be in the graph they build."""
    graph = _graph()
    assert "stream.worker.pipeline" in graph["stream.worker.main"]
    assert "stream.contract.events" in graph["trainer.labels.sequences"]
    assert "stream.ops.dlq" in graph["stream.cli"]


def _external_imports(path: Path) -> set[str]:
    """Top-level names of every library `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_serving_runs_a_version_from_its_data_without_torch() -> None:
    """What Triton runs reads ONNX graphs and numbers: no torch, no trainer, nowhere in the
    serving modules or the project modules they import."""
    graph = _graph()
    modules = _modules()
    reached: set[str] = set()
    todo = [m for m in modules if _within(m, ("stream.serving",))]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, ()))
    assert not {m for m in reached if _within(m, ("trainer",))}
    heavy = {"torch", "transformers", "sklearn", "peft"}
    assert {m: found for m in reached if (found := _external_imports(modules[m]) & heavy)} == {}
