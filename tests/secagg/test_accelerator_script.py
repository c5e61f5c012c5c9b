"""Smoke test of tests/benchmarks/accelerator.py: its quick sizes on the CPU, as a subprocess.

The script is meant for a rarely lent GPU, where a crash costs the loan: this runs it
here with ``--quick --allow-cpu`` so that it is known to work before it gets there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "benchmarks" / "accelerator.py"


def run_script(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_accelerator_script__quick_on_cpu_passes_and_prints_figures() -> None:
    result = run_script("--quick", "--allow-cpu")
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "FAIL" not in output, output
    assert "jax.default_backend(): cpu" in output
    assert "PASS  RFC 8439 2.4.2 encryption (jax)" in output
    figures = output.split("== figures (paste into the README) ==\n", 1)[1].splitlines()
    assert figures[0].startswith("device: cpu")
    passed, total = figures[1].removeprefix("bit-exactness and correctness: ").removesuffix(" PASS").split("/")
    assert passed == total and int(total) >= 40, figures[1]
    for prefix in ("ChaCha20 keystream", "unmask (masks.unmask", "ring_sum of", "linear_statistics", "logistic_statistics",
                   "count_block"):
        assert any(line.startswith(prefix) for line in figures[2:]), f"no {prefix!r} figure in:\n{output}"
    # Without --allow-cpu it stops at once on a CPU backend, with a message and exit code 0.
    stopped = run_script("--quick")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "JAX's default backend is the CPU" in stopped.stdout and "== figures" not in stopped.stdout
