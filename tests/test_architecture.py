"""The package's shape: imports point down, never up, and never in a circle.

Read from the source with ``ast`` (nothing is imported), so a new upward import, a
cycle or an unlisted lazy import fails here with the file and line, not later as a slow
command or an import error in one process of a federation.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline.analyses.registry import ANALYSIS_NAMES, get_analysis
from pipeline.errors import ConfigurationError
from pipeline.federation.baselines import BASELINES
from pipeline.federation.localhost import WITH_BASELINES

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


LAZY_IMPORTS = {
    "pipeline/backends.py": {"jax"},
    "pipeline/stats/counts.py": {"pipeline.stats.counts_jax"},
    "pipeline/stats/glm.py": {"pipeline.stats.glm_jax"},
    "pipeline/stats/pca.py": {"pipeline.stats.pca_jax"},
    "pipeline/secagg/chacha20.py": {"pipeline.secagg.chacha20_jax"},
    "pipeline/secagg/masks.py": {"pipeline.secagg.kernels"},
    "pipeline/secagg/server.py": {"pipeline.secagg.kernels"},
    "pipeline/analyses/gwas/plots.py": {"matplotlib.figure.Figure"},
    "pipeline/federation/localhost.py": {"pipeline.federation.baselines.BASELINES"},
}
"""The only imports inside functions outside the CLI, by file. Each loads what costs a process
start seconds and only some jobs need: JAX and its engines (only when one is chosen), Matplotlib
(the coordinator's plots), the local run's baselines (Flax). Importing them is tested below."""


def test_imports__no_cycle_and_no_lazy_import_outside_the_cli_but_those_listed():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    lazy = []
    for module, path in modules.items():
        found = _imports(path)
        for _, name, inside in found:
            target = _resolve(name, modules)
            # A listed lazy import may point back up (an engine module uses its dispatcher's checks).
            if target is not None and target != module and not inside:
                graph[module].add(target)
        if module != "pipeline.cli":
            listed = LAZY_IMPORTS.get(str(path.relative_to(PACKAGE.parent)), set())
            lazy += sorted({f"{path.relative_to(PACKAGE.parent)}:{line} {name}" for line, name, inside in found
                            if inside and name not in listed})
    assert not lazy, "imports inside functions (only cli.py and LAZY_IMPORTS may, to start fast):\n" + "\n".join(lazy)
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


def test_imports__every_listed_lazy_import_is_still_made_and_loads():
    for file, names in LAZY_IMPORTS.items():
        made = {name for _, name, inside in _imports(PACKAGE.parent / file) if inside}
        assert names <= made, f"{file} no longer imports {sorted(names - made)} lazily: drop it from LAZY_IMPORTS"
        for name in names:
            assert _load(name) is not None, name


def _load(name: str) -> object:
    """The module ``name``, or the attribute its last part names in the module before it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        module, _, attribute = name.rpartition(".")
        return getattr(importlib.import_module(module), attribute)


def test_registry__every_analysis_loads_under_its_own_name():
    for name in ANALYSIS_NAMES:
        assert get_analysis(name).name == name
    with pytest.raises(ConfigurationError, match="unknown analysis 'gwass'.*'gwas'"):
        get_analysis("gwass")


def test_baselines__the_local_run_knows_which_analyses_have_them():
    assert set(BASELINES) == WITH_BASELINES


PROCESS_START_NEVER_LOADS = ("jax", "flax", "optax", "matplotlib", "scipy.stats", "pandas")
"""What a coordinator, a site agent or ``genofed federate`` must start without, and what a census,
a secure sum or a linear GWAS on a CPU never loads: 2.5 s of imports per process on 2 cores."""


def _loaded_heavy(code: str, **env: str) -> list[str]:
    script = (
        f"{code}\nimport sys\nheavy = {PROCESS_START_NEVER_LOADS!r}\n"
        "print(','.join(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy)))))"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("JAX_", "GENOFED_", "TPU_", "PJRT_"))}
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**environment, **env}).stdout.strip()
    return sorted({name.split(".")[0] if not name.startswith("scipy.stats") else "scipy.stats"
                   for name in loaded.split(",") if name})


def test_process_start__coordinator_agent_and_federate_load_no_jax_flax_or_matplotlib():
    code = ("import pipeline.federation.agent, pipeline.federation.coordinator, pipeline.federation.localhost\n"
            "import pipeline.analyses.census, pipeline.analyses.gwas, pipeline.analyses.secure_sum, pipeline.analyses.pca")
    assert _loaded_heavy(code) == []


def test_cpu_engines__a_census_a_linear_gwas_and_a_secure_round_run_without_jax():
    code = """
import numpy as np
from pipeline.backends import accelerator_plugin_installed
from pipeline.encoding import Ring
from pipeline.secagg import masks
from pipeline.secagg.prg import AES_CTR, CHACHA20
from pipeline.stats import counts, glm
assert not accelerator_plugin_installed()
calls = np.array([[0, 1, 2, -1], [2, 2, 1, 0]], np.int8)
counts.count_variants(calls)
glm.linear_statistics(calls, np.ones((4, 1)), np.arange(4.0))
glm.linear_fit(np.ones((1, 3)), np.ones((1, 2)), np.ones(1), np.full(1, 4.0))
for prg in (AES_CTR, CHACHA20):
    masked = masks.masked_copy(np.zeros(8, np.uint64), [bytes(32)], [1], prg=prg)
    assert not masks.unmask(masked, [bytes(32)], [], [], Ring.R64, prg=prg).any()
"""
    assert _loaded_heavy(code, JAX_PLATFORMS="cpu") == []


def test_accelerator_detection__a_jax_plugin_or_an_accelerator_platform_makes_jax_decide(tmp_path):
    ask = "from pipeline.backends import accelerator_plugin_installed as a; print(a())"

    def detected(**env: str) -> str:
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith(("JAX_", "TPU_", "PJRT_"))}
        return subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, check=True,
                              env={**environment, **env}).stdout.strip()

    assert detected(JAX_PLATFORMS="cpu") == "False"
    assert detected(JAX_PLATFORMS="cuda,cpu") == "True"
    (tmp_path / "jax_plugins" / "some_accelerator").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "some_accelerator" / "__init__.py").write_text("")
    with_plugin = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    assert detected(PYTHONPATH=with_plugin) == "True"
    assert detected(PYTHONPATH=with_plugin, JAX_PLATFORMS="cpu") == "False"
    assert detected(PJRT_NAMES_AND_LIBRARY_PATHS="some_accelerator:/opt/plugin.so") == "True"


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
