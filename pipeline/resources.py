"""Where the files shipped beside the package live: ``schemas/`` and ``workflows/``.

In a source checkout (``pip install -e .``) they are the repository's top-level folders;
in a regular install they are data files under ``<prefix>/share/genofed/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.errors import ConfigurationError


def shipped_dir(name: str, probe: str) -> Path:
    """The folder ``name`` (``schemas`` or ``workflows``), found by a file it must hold."""
    candidates = [
        Path(__file__).resolve().parent.parent / name,
        Path(sys.prefix) / "share" / "genofed" / name,
    ]
    for candidate in candidates:
        if (candidate / probe).is_file():
            return candidate
    raise ConfigurationError(
        f"cannot find genofed's {name}/ folder (looked in {', '.join(map(str, candidates))}); "
        "reinstall genofed with 'pip install -e .' from the repository"
    )


def schemas_dir() -> Path:
    """The Arrow contract's JSON files."""
    return shipped_dir("schemas", "variants.json")


def workflows_dir() -> Path:
    """Ready job specs and site workflows."""
    return shipped_dir("workflows", "census.yaml")
