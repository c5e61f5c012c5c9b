"""Structured logs: one JSON object per line, for the long-running commands (``--log-format json``).

A log shipper (journald, Loki, Elasticsearch) reads a line as one record, with the
fields genofed passes in ``extra=`` (``event``, ``job_id``, ``site``...) as keys, rather
than parsing text. Only the CLI installs the formatter (:func:`pipeline.cli._configure_logging`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

__all__ = ["JsonLinesFormatter", "LOG_FORMATS", "event_extra"]

LOG_FORMATS = ("text", "json")
"""The ``--log-format`` choices."""

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def event_extra(event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``extra=`` for a record of ``event`` with ``fields`` (a field named like a record attribute gets a ``field_`` prefix)."""
    extra = {"event": event}
    for key, value in fields.items():
        extra[f"field_{key}" if key in _RECORD_ATTRIBUTES or key == "event" else key] = value
    return extra


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then its fields.

    Fields are the record's ``extra=`` keys; values JSON cannot hold are written as
    their ``str``. An exception is one ``exception`` string (newlines escaped), so a
    record never spans two lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
