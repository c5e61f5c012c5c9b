"""The byte formats that need no Arrow: canonical JSON, digests, the media types.

Split from :mod:`pipeline.federation.wire` so that the HTTPS client
(:mod:`pipeline.federation.transport`), and with it ``genofed job submit|status``,
starts without loading pyarrow and NumPy; ``wire`` re-exports all of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["ARROW_MEDIA_TYPE", "JSON_MEDIA_TYPE", "canonical_json", "digest"]

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
JSON_MEDIA_TYPE = "application/json"


def digest(data: bytes) -> str:
    """SHA-256 hex digest of a payload: what idempotency and the audit logs compare."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted-key, compact JSON: equal values give equal bytes (and equal digests)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
