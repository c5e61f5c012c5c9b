"""The analyst's download of a done job's results: summary, Arrow tables as Parquet, files.

Apart from :mod:`pipeline.federation.analyst` because it is the one part of the
analyst's client that needs pyarrow: ``genofed job submit|status|wait`` do not load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import outputs
from pipeline.errors import ProtocolError
from pipeline.federation import wire
from pipeline.federation.analyst import analyst_connection
from pipeline.federation.job_spec import check_job_id
from pipeline.federation.transport import Connection

__all__ = ["TABLE_SCHEMAS", "download_results", "fetch_results"]

TABLE_SCHEMAS = {"census_variants": "census_variants"}
"""Result tables written through the Arrow contract (others are written as received)."""


def download_results(connection: Connection, job_id: str, out: Path | str, *, force: bool = False) -> dict[str, Any]:
    """Writes a done job's results: ``OUT/summary.json``, one Parquet file per table, and its files.

    Everything is written to a temporary folder renamed to ``out`` at the end, so an
    interrupted download leaves no half-written results.

    Raises:
        ProtocolError: ``job_id`` is not a job ID (nothing is sent or written).
        HttpError: the job is unknown or another analyst's (404), or not done (409).
        OutputExistsError: ``out`` exists and ``force`` is false.
    """
    check_job_id(job_id)
    listing = connection.get_json(f"/v1/jobs/{job_id}/results")
    target = Path(out)
    files = list(listing.get("files", []))
    with outputs.atomic_directory(target, force=force) as tmp:
        for name in listing["tables"]:
            table: pa.Table = wire.decode_table(connection.get_bytes(f"/v1/jobs/{job_id}/results/{name}"), what=f"result table {name}")
            if name in TABLE_SCHEMAS:
                outputs.write_table(table, tmp / f"{name}.parquet", TABLE_SCHEMAS[name])
            else:
                pq.write_table(table, tmp / f"{name}.parquet")
        for name in files:
            (tmp / _file_name(name)).write_bytes(connection.get_bytes(f"/v1/jobs/{job_id}/files/{name}"))
        (tmp / "summary.json").write_text(json.dumps(listing["summary"], indent=2, sort_keys=True) + "\n")
    return {"job_id": job_id, "out": str(target), "tables": listing["tables"], "files": files, "summary": listing["summary"]}


def _file_name(name: str) -> str:
    """A result file's name, refused if it would leave the results folder."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise ProtocolError(f"the coordinator names a result file {name!r}; a result file is a plain file name")
    return name


def fetch_results(config_path: Path | str, job_id: str, out: Path | str, *, force: bool = False) -> dict[str, Any]:
    """``genofed job results``: downloads a done job's results into ``out``; ``job_status`` is the job's status."""
    check_job_id(job_id)
    with analyst_connection(config_path) as connection:
        status = connection.get_json(f"/v1/jobs/{job_id}")  # first: nothing is asked once the folder is in place
        return {**download_results(connection, job_id, out, force=force), "job_status": status}
