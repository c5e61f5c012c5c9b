"""Choosing between a CPU engine and a JAX engine for the same computation.

Some kernels have two implementations with the same results: one that is fastest on a
CPU (OpenSSL's ChaCha20, NumPy counts, the NumPy linear-model sums) and a jitted JAX one
for accelerators. Integer results are bit-identical; float64 sums agree to rounding
(they are added in another order). The choice follows JAX's default backend and can be
forced with an environment variable, in one way for every such kernel.

Importing JAX costs about a second of CPU, paid by every coordinator and site agent that
starts. JAX finds an accelerator only through a plugin (``jax[cuda12]``, ROCm, Metal:
modules under the ``jax_plugins`` namespace or ``jax_plugins`` entry points), ``libtpu``
or a runtime named in its environment variables. Where none of these is present and
``JAX_PLATFORMS`` names no accelerator, the backend is the CPU and JAX is not imported to
ask; otherwise JAX is asked. The JAX engines live in modules of their own (``*_jax``,
:mod:`pipeline.secagg.kernels`), imported when one is chosen.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from importlib.metadata import entry_points

from pipeline.errors import ConfigurationError


def choose_engine(engine: str | None, *, engines: tuple[str, str], env_var: str, what: str) -> str:
    """The engine to run: ``engine`` if given, else ``$env_var``, else by JAX backend.

    Args:
        engine: an explicit choice, or None.
        engines: ``(cpu_engine, accelerator_engine)``, e.g. ``("openssl", "jax")``.
        env_var: the environment variable that forces a choice (``GENOFED_*``).
        what: what the engine computes, for messages ("PRG", "count").

    Raises:
        ConfigurationError: ``engine`` or the environment variable names no engine.
    """
    if engine is not None:
        if engine not in engines:
            raise ConfigurationError(f"unknown {what} engine {engine!r}; use one of {engines}")
        return engine
    forced = os.environ.get(env_var, "").strip().lower()
    if forced:
        if forced not in engines:
            raise ConfigurationError(f"{env_var}={forced!r} is not a {what} engine; use one of {engines} or unset it")
        return forced
    return engines[0] if jax_backend() == "cpu" else engines[1]


def jax_backend() -> str:
    """JAX's default backend (``"cpu"``, ``"gpu"``, ``"tpu"``...), without importing JAX where it can only be the CPU."""
    if "jax" not in sys.modules and not accelerator_plugin_installed():
        return "cpu"
    import jax  # an accelerator may be present: only JAX can tell

    return str(jax.default_backend())


@functools.cache
def accelerator_plugin_installed() -> bool:
    """Whether JAX could find a backend other than the CPU here (read once per process).

    ``JAX_PLATFORMS``, when set, decides; otherwise ``libtpu``, any installed ``jax_plugins``
    module or entry point, or a runtime named by ``TPU_LIBRARY_PATH`` or
    ``PJRT_NAMES_AND_LIBRARY_PATHS`` counts (JAX itself then says which backend it chose).
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return any(name.strip() not in ("", "cpu") for name in platforms.split(","))
    if os.environ.get("TPU_LIBRARY_PATH") or os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS"):
        return True  # a TPU runtime or PJRT plugins named by path
    if importlib.util.find_spec("libtpu") is not None or importlib.util.find_spec("jax_plugins") is not None:
        return True
    return bool(entry_points(group="jax_plugins"))
