"""The HTTPS client of the federation: mutual TLS, bounded retries with backoff.

Sites and analysts reach the coordinator only through :class:`Connection`. It knows
nothing of what the bodies mean (formats: :mod:`pipeline.federation.wire` and
:mod:`pipeline.federation.secagg_wire`) and imports neither secure aggregation nor
JAX, so an analyst's client that submits jobs and downloads results loads neither.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from pipeline.errors import ProtocolError
from pipeline.federation.tls import client_context
from pipeline.federation.wire import ARROW_MEDIA_TYPE, canonical_json

__all__ = ["Connection", "HttpError"]


class HttpError(ProtocolError):
    """The coordinator answered with an error status; ``status`` and ``detail`` say which."""

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Connection:
    """An HTTPS client for one participant: mutual TLS, bounded retries with backoff.

    Transport failures (connection refused or reset, timeouts, 502/503/504), 429 (the
    coordinator's limits, :mod:`pipeline.federation.limits`) and 507 (its disk is full) are retried with exponential
    backoff and jitter, never sooner than a ``Retry-After`` asks, up to ``max_attempts``
    times (unbounded when ``None``: a site agent waits out a coordinator restart);
    answers with another error status raise :class:`HttpError` at once.
    """

    RETRY_STATUS = frozenset({429, 502, 503, 504, 507})

    def __init__(
        self,
        base_url: str,
        *,
        cert: Any,
        key: Any,
        ca: Any,
        timeout: float = 60.0,
        max_attempts: int | None = 8,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.client = httpx.Client(base_url=self.base_url, verify=client_context(cert, key, ca), timeout=timeout)
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), timeout: float | None = None, **kwargs: Any) -> Any:
        """One request with retries; returns the ``httpx.Response`` (status in ``ok``)."""
        attempt = 0
        delay = self.backoff
        while True:
            attempt += 1
            not_before = 0.0
            try:
                extra = {} if timeout is None else {"timeout": timeout}
                response = self.client.request(method, path, **kwargs, **extra)
            except (httpx.TransportError,) as error:
                failure = f"{type(error).__name__}: {error}"
                status = None
            else:
                self.bytes_sent += len(kwargs.get("content", b"") or b"")
                self.bytes_received += len(response.content)
                if response.status_code in ok:
                    return response
                status = response.status_code
                failure = _detail(response)
                not_before = _retry_after(response)
                if status not in self.RETRY_STATUS:
                    raise HttpError(status, failure, method, path)
            if self.max_attempts is not None and attempt >= self.max_attempts:
                if status is not None:
                    raise HttpError(status, failure, method, path)
                raise ProtocolError(f"{method} {self.base_url}{path}: no answer after {attempt} attempts ({failure})")
            time.sleep(max(not_before, delay * random.uniform(0.5, 1.0)))  # jitter: retrying parties do not move in step
            delay = min(delay * 2, self.max_backoff)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, value: Any, *, ok: tuple[int, ...] = (200, 201)) -> Any:
        return self.request("POST", path, ok=ok, content=canonical_json(value), headers={"content-type": "application/json"}).json()

    def get_bytes(self, path: str) -> bytes:
        return bytes(self.request("GET", path).content)

    def put_bytes(self, path: str, body: bytes) -> Any:
        return self.request("PUT", path, ok=(200, 201), content=body, headers={"content-type": ARROW_MEDIA_TYPE}).json()


def _retry_after(response: Any) -> float:
    """Seconds a ``Retry-After`` header asks to wait (0 without one; capped at a minute)."""
    value = response.headers.get("retry-after", "")
    return min(float(value), 60.0) if value.isdigit() else 0.0


def _detail(response: Any) -> str:
    try:
        value = response.json()
        return str(value.get("detail", value))
    except ValueError:
        return response.text[:500]
