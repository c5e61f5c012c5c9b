"""Choosing between a CPU engine and a JAX engine for the same computation.

Some kernels have two implementations with the same results: one that is fastest on a
CPU (OpenSSL's ChaCha20, NumPy counts, the NumPy linear-model sums) and a jitted JAX one
for accelerators. Integer results are bit-identical; float64 sums agree to rounding
(they are added in another order). The choice
follows JAX's default backend and can be forced with an environment variable, in one
way for every such kernel.
"""

from __future__ import annotations

import os

import jax

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
    return engines[0] if jax.default_backend() == "cpu" else engines[1]
