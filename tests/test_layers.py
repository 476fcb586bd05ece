"""raysys' layers, checked: every import under ``raysys/`` points down (README, "Layers").

The imports are read with :mod:`ast`, at the top of a module and inside functions alike (a lazy import
is still a dependency), so a test run needs none of the heavy libraries. Three rules:

- a module never imports a module of a higher layer;
- ``serve``, ``scheduler`` and ``jobs`` never import one another, nor ``ingest``/``analytics`` nor
  ``models``/``storage`` (packages that share a layer stay independent);
- inside ``raysys.tasks`` a task module imports only the registry and the execution module.

Each failure names ``file:line``, the import and both layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RAYSYS = Path(__file__).resolve().parent.parent / "raysys"

# Top to bottom; a module may import from its own layer and from the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("commands", ("commands", "cli", "stack", "synthetic")),
    ("services", ("serve", "scheduler", "jobs")),
    ("queue", ("queue",)),
    ("tasks", ("tasks",)),
    ("work", ("ingest", "analytics")),
    ("actors", ("actors",)),
    ("backends", ("models", "storage")),
    ("foundation", ("config", "errors", "constants", "paths", "audio", "runtime", "logs")),
)
# Layers whose packages must not import one another.
INDEPENDENT = ("services", "work", "backends")
# What a task module may import from its own package.
TASK_SHARED = ("raysys.tasks.registry", "raysys.tasks.execute")

RANK = {part: (rank, name) for rank, (name, parts) in enumerate(LAYERS) for part in parts}


def module_name(path: Path, root: Path = RAYSYS) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str | None:
    """The layered part a ``raysys.*`` module belongs to (``raysys.queue.bridge`` -> ``queue``)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[0] == "raysys" else None


def imported_modules(path: Path, root: Path = RAYSYS) -> list[tuple[int, str]]:
    """(line, module) for every ``raysys`` import in the file, wherever it sits (TYPE_CHECKING too)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "raysys":  # `from raysys import errors`: the module errors
                found += [(node.lineno, f"raysys.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, module) for line, module in found if part_of(module)]


def violations(root: Path = RAYSYS) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        src_part = part_of(source)
        if src_part is None:  # raysys/__init__.py
            continue
        where = path.relative_to(root.parent)
        for line, target in imported_modules(path, root):
            dst_part = part_of(target)
            if src_part not in RANK or dst_part not in RANK:
                unknown = src_part if src_part not in RANK else dst_part
                problems.append(f"{where}:{line}: {target}: raysys.{unknown} is in no layer (add it to LAYERS)")
                continue
            (src_rank, src_layer), (dst_rank, dst_layer) = RANK[src_part], RANK[dst_part]
            if dst_rank < src_rank:
                problems.append(f"{where}:{line}: {source} (layer {src_layer}) imports {target} "
                                f"(layer {dst_layer}, higher)")
            elif src_rank == dst_rank and src_part != dst_part and src_layer in INDEPENDENT:
                problems.append(f"{where}:{line}: {source} (layer {src_layer}) imports {target} "
                                f"sideways ({src_part} and {dst_part} stay independent)")
            elif (src_part == dst_part == "tasks" and source not in TASK_SHARED
                  and target not in TASK_SHARED and target != "raysys.tasks"):
                problems.append(f"{where}:{line}: {source} (layer tasks) imports {target}: a task module "
                                f"imports only {' and '.join(TASK_SHARED)}")
    return problems


def test_every_raysys_package_and_module_has_a_layer() -> None:
    parts = {path.stem if path.suffix else path.name for path in RAYSYS.iterdir()
             if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()}
    assert sorted(parts - RANK.keys()) == [], "give each of these a layer in LAYERS and the README"


def test_imports_point_down() -> None:
    problems = violations()
    assert not problems, f"{len(problems)} import(s) against the layers:\n" + "\n".join(problems)


@pytest.mark.parametrize(("where", "source", "expected"), [
    ("models/x.py", "from raysys.actors.embedding import pick_precision\n", "(layer backends) imports raysys.actors"),
    ("serve/x.py", "def f():\n    from raysys.jobs import runner\n", "sideways (serve and jobs"),
    ("tasks/x.py", "from raysys.tasks.analytics import open_db\n", "a task module imports only"),
    ("storage/x.py", "from raysys import synthetic\n", "imports raysys.synthetic (layer commands, higher)"),
    ("queue/x.py", "from ..serve import app\n", "imports raysys.serve (layer services, higher)"),
])
def test_the_check_catches(tmp_path: Path, where: str, source: str, expected: str) -> None:
    """The checker itself: a planted upward, sideways or task-to-task import is reported with file:line."""
    path = tmp_path / "raysys" / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    problems = violations(tmp_path / "raysys")
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith(f"raysys/{where}:"), problems
