"""The package's shape: imports point down, never up, and never in a circle.

Read from the source with ``ast`` (nothing is imported), so a new upward import, a
cycle or a lazy import fails here with the file and line, not later as a slow command
or an import error in one process of a federation.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

LOWER_ROOMS = ("secagg", "stats", "io", "harmonize", "models", "analyses", "privacy")
"""Rooms that must not reach the runtime, the workflows, the demo or the CLI."""
UPPER = ("pipeline.federation", "pipeline.workflow", "pipeline.demo", "pipeline.cli")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported name, inside a function) of every import of a file (``from a import b`` gives ``a.b``)."""
    tree = ast.parse(path.read_text())
    in_function = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for sub in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]  # a submodule, else resolves to the module
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name, id(node) in in_function) for name in names]
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_imports__lower_rooms_never_import_the_runtime_workflows_demo_or_cli():
    bad = []
    for module, path in _modules().items():
        if _room(module) not in LOWER_ROOMS:
            continue
        for line, name, _ in _imports(path):
            if any(name == upper or name.startswith(upper + ".") for upper in UPPER):  # pipeline.demo.x too
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_imports__analyses_and_secure_aggregation_do_not_know_each_other():
    bad = []
    for module, path in _modules().items():
        forbidden = {"analyses": "pipeline.secagg", "secagg": "pipeline.analyses"}.get(_room(module))
        for line, name, _ in _imports(path) if forbidden else ():
            if name == forbidden or name.startswith(forbidden + "."):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name}")
    assert not bad, "analyses declare layouts through pipeline.encoding only:\n" + "\n".join(bad)


def test_imports__no_cycle_and_no_lazy_import_outside_the_cli():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    lazy = []
    for module, path in modules.items():
        found = _imports(path)
        for _, name, _ in found:
            target = _resolve(name, modules)
            if target is not None and target != module:
                graph[module].add(target)
        if module != "pipeline.cli":
            lazy += sorted({f"{path.relative_to(PACKAGE.parent)}:{line}" for line, _, inside in found if inside})
    assert not lazy, "imports inside functions (only cli.py may, to start fast):\n" + "\n".join(lazy)
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(trail[trail.index(module):] + [module])
        visiting.add(module)
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(modules):
        visit(module, [])


ANALYST_CLIENT_NEVER_LOADS = ("jax", "numpy", "pyarrow", "httpx", "pipeline.secagg", "pipeline.analyses", "pipeline.federation.wire")
"""What ``genofed job submit|status|wait|cancel|list`` must start without (each costs 0.1-0.4 s of imports)."""


def test_analyst_client__loads_neither_jax_nor_secure_aggregation_nor_analyses_nor_arrow():
    code = (
        "import sys, pipeline.cli, pipeline.federation.analyst\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {ANALYST_CLIENT_NEVER_LOADS!r} "
        f"or m.startswith({ANALYST_CLIENT_NEVER_LOADS!r}))\n"
        "print(','.join(heavy))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"the analyst's client loads {loaded}"
