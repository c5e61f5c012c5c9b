"""YAML as genofed reads it in job specs, site workflows and ``--param`` values.

PyYAML resolves scalars by YAML 1.1, where a float needs a dot: ``1e-10`` and ``5e-3``
are strings and only ``1.0e-10`` is a number. People (and plink's documentation) write
``--hwe 1e-10``, so every place that reads a spec uses :class:`SpecLoader`, a
``yaml.SafeLoader`` that also reads YAML 1.2 exponent forms (``1e-10``, ``5e-3``,
``1E6``, ``+2e+5``) as floats. Everything else resolves as before.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["SpecLoader", "load_yaml"]

_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
"""A number with an exponent and no dot (``1e-10``) or a dot (``1.e5``); YAML 1.1's resolver already takes the second."""


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-10``, ``5e-3`` and ``1E6`` as floats (YAML 1.2), not strings."""


# add_implicit_resolver copies the inherited table first, so yaml.SafeLoader itself is unchanged.
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """One YAML document read with :class:`SpecLoader` (as ``yaml.safe_load``, exponent numbers as floats).

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=SpecLoader)  # a SafeLoader: no arbitrary objects
