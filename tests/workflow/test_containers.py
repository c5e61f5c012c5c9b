"""Container recipes under sites/: they copy files that exist and install the package with genofed as entry point."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile__copies_existing_paths_and_runs_genofed():
    text = (REPO / "sites" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (.+) \S+$", text, flags=re.MULTILINE)
    sources = [source for line in copies for source in line.split()]
    assert {"pyproject.toml", "README.md", "pipeline", "schemas", "workflows"} <= set(sources)
    assert all((REPO / source).exists() for source in sources), sources
    assert re.search(r"^FROM python:3\.11", text, flags=re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["genofed"]' in text
    assert "EXPOSE" not in text  # a site only connects out


def test_apptainer_def__copies_existing_paths_and_runs_genofed():
    text = (REPO / "sites" / "apptainer.def").read_text()
    files = re.search(r"^%files\n(.*?)\n\n", text, flags=re.MULTILINE | re.DOTALL).group(1)
    sources = [line.split()[0] for line in files.splitlines() if line.strip()]
    assert {"pyproject.toml", "README.md", "pipeline", "schemas", "workflows"} <= set(sources)
    assert all((REPO / source).exists() for source in sources), sources
    assert re.search(r"^Bootstrap: docker\nFrom: python:3\.11", text, flags=re.MULTILINE)
    assert "pip install /opt/genofed" in text
    assert re.search(r"^%runscript\n\s+exec genofed \"\$@\"", text, flags=re.MULTILINE)


def test_pyproject__ships_what_the_recipes_install():
    text = (REPO / "pyproject.toml").read_text()
    assert 'genofed = "pipeline.cli:main"' in text
    assert '"share/genofed/workflows" = ["workflows/*.yaml"]' in text
