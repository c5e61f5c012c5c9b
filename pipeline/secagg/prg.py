"""The mask PRGs a round may use, by name: part of the round's public parameters.

Every party of a round must make masks with the same PRG, or they do not cancel; the
job spec's ``mask_prg`` names it. What each name means, and the engines that make it,
is :mod:`pipeline.secagg.masks`. This module imports nothing heavy, so job specs and
round parameters are checked without loading the mask engines.
"""

from __future__ import annotations

from pipeline.errors import ConfigurationError

AES_CTR = "aes128-ctr"
CHACHA20 = "chacha20"
DEFAULT_PRG = AES_CTR
PRGS = (DEFAULT_PRG, CHACHA20)
"""Every mask PRG, the default first."""


def check_prg(prg: object) -> str:
    """``prg`` if it names a mask PRG.

    Raises:
        ConfigurationError: any other value, naming the choices.
    """
    if not isinstance(prg, str) or prg not in PRGS:
        raise ConfigurationError(f"unknown mask PRG {prg!r}; use one of {', '.join(PRGS)}")
    return prg
