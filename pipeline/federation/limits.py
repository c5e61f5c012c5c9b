"""How much of the coordinator one caller, and all callers together, may hold at once.

Every request body is buffered in memory until it is checked and staged, so without
limits memory grows with whatever clients send at once: a site with a valid
certificate could open hundreds of uploads and starve the others. Four limits bound
it, each refused at once with 429 (try again later, ``Retry-After``), never queued:

- ``max_concurrent_requests``: requests in progress, all callers together;
- ``max_requests_per_participant``: requests in progress for one certificate name
  (long polls included: a site needs one at a time, an agent at most a few);
- ``max_bytes_in_flight``: body bytes buffered, all callers together;
- ``max_bytes_in_flight_per_participant``: body bytes buffered for one caller.

A body is reserved in full from its ``Content-Length`` before a byte of it is read,
and chunk by chunk when it has none. A single body larger than ``max_message_bytes``
is 413 (it can never be accepted); one that does not fit *now* is 429. Memory held by
bodies is therefore at most ``max_bytes_in_flight``, whatever clients do.

The counters live in the server's event loop (one thread), so they need no lock.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import ConfigurationError, GenofedError

__all__ = ["DEFAULT_LIMITS", "BodyQuota", "Limits", "Overloaded", "RequestLimiter"]


class Overloaded(GenofedError):
    """A limit of :class:`Limits` is reached for now: answered 429 with ``Retry-After``."""

    retry_after_seconds = 1


@dataclass(frozen=True)
class Limits:
    """The coordinator's resource limits (``[limits]`` of ``coordinator.toml``; see the module docstring)."""

    max_concurrent_requests: int = 256
    max_requests_per_participant: int = 8
    max_bytes_in_flight: int = 1 << 30
    max_bytes_in_flight_per_participant: int = 128 << 20

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "max_requests_per_participant", "max_bytes_in_flight",
                     "max_bytes_in_flight_per_participant"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"limits.{name} must be a positive integer, got {value!r}")
        if self.max_requests_per_participant > self.max_concurrent_requests:
            raise ConfigurationError("limits.max_requests_per_participant cannot exceed limits.max_concurrent_requests")
        if self.max_bytes_in_flight_per_participant > self.max_bytes_in_flight:
            raise ConfigurationError(
                "limits.max_bytes_in_flight_per_participant cannot exceed limits.max_bytes_in_flight"
            )


DEFAULT_LIMITS = Limits()


class BodyQuota:
    """The bytes one request may buffer, reserved against its caller's and the global quota."""

    def __init__(self, limiter: RequestLimiter, caller: str) -> None:
        self._limiter, self._caller = limiter, caller
        self.reserved = 0

    def reserve(self, size: int) -> None:
        """Reserves ``size`` more bytes, or raises :class:`Overloaded` (nothing reserved)."""
        self._limiter._reserve(self._caller, size)
        self.reserved += size

    def release(self) -> None:
        self._limiter._release(self._caller, self.reserved)
        self.reserved = 0


class RequestLimiter:
    """Counts requests and buffered body bytes, per caller and in all (see the module docstring)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.requests = 0
        self.requests_of: Counter[str] = Counter()
        self.bytes = 0
        self.bytes_of: Counter[str] = Counter()
        self.refused = 0

    @contextlib.contextmanager
    def request(self, caller: str) -> Iterator[BodyQuota]:
        """Holds one request slot of ``caller`` while the request runs; yields its body quota.

        Raises:
            Overloaded: the caller, or the server, has as many requests in progress as allowed.
        """
        limits = self.limits
        if self.requests >= limits.max_concurrent_requests:
            self.refused += 1
            raise Overloaded(f"the coordinator is serving {self.requests} requests, its limit "
                             "(limits.max_concurrent_requests); try again shortly")
        if self.requests_of[caller] >= limits.max_requests_per_participant:
            self.refused += 1
            raise Overloaded(f"{caller!r} has {self.requests_of[caller]} requests in progress, the limit per participant "
                             "(limits.max_requests_per_participant); wait for one to finish")
        self.requests += 1
        self.requests_of[caller] += 1
        quota = BodyQuota(self, caller)
        try:
            yield quota
        finally:
            quota.release()
            self.requests -= 1
            self.requests_of[caller] -= 1
            if not self.requests_of[caller]:
                del self.requests_of[caller]

    def _reserve(self, caller: str, size: int) -> None:
        limits = self.limits
        if self.bytes_of[caller] + size > limits.max_bytes_in_flight_per_participant:
            self.refused += 1
            raise Overloaded(
                f"{caller!r} already has {self.bytes_of[caller]} body bytes in flight; {size} more exceed the quota of "
                f"{limits.max_bytes_in_flight_per_participant} (limits.max_bytes_in_flight_per_participant)"
            )
        if self.bytes + size > limits.max_bytes_in_flight:
            self.refused += 1
            raise Overloaded(f"the coordinator holds {self.bytes} body bytes; {size} more exceed its limit "
                             f"of {limits.max_bytes_in_flight} (limits.max_bytes_in_flight)")
        self.bytes += size
        self.bytes_of[caller] += size

    def _release(self, caller: str, size: int) -> None:
        if size:
            self.bytes -= size
            self.bytes_of[caller] -= size
            if not self.bytes_of[caller]:
                del self.bytes_of[caller]
