"""Refused TLS handshakes, logged at the coordinator with the peer's address and the reason.

uvicorn (and asyncio or uvloop under it) drop a connection whose handshake failed
without a word: the HTTP protocol never sees it, so an operator whose site presents an
expired certificate, or one from another CA, would find nothing in the coordinator's
log. :func:`observed_tls` terminates TLS in the protocol factory instead, where the
handshake's outcome and the peer are both known, and :class:`RefusedHandshakes` logs
each refusal, rate-limited per peer and reason so that a flood cannot fill the log.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from pipeline.federation import tls

__all__ = ["TLS_SHUTDOWN_SECONDS", "RefusedHandshakes", "observed_tls", "refusal_reason"]

log = logging.getLogger(__name__)

TLS_SHUTDOWN_SECONDS = 1.0
"""How long a closing connection waits for the peer's close_notify after sending its own.

TLS 1.3 lets the closing side stop there; asyncio waits 30 s by default, and a client
that keeps an idle connection in its pool reads nothing, so it never answers: one such
client held a coordinator's SIGTERM for those 30 s."""


_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's certificate (unknown CA)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client finds this server's certificate expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected this server's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client rejected this server's certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "HTTP_REQUEST": "plain HTTP on the HTTPS port",
    "WRONG_VERSION_NUMBER": "not TLS, or a TLS version below 1.2",
    "UNSUPPORTED_PROTOCOL": "TLS version below 1.2",
}


def refusal_reason(error: BaseException) -> str | None:
    """Why a server-side TLS handshake failed, in a few words; ``None`` when it was no TLS refusal.

    A peer that closed or reset the connection mid-handshake (a port probe, a client
    giving up) is no refusal.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code == tls.VERIFY_EXPIRED:
            return "certificate expired"
        if code == tls.VERIFY_NOT_YET_VALID:
            return "certificate not yet valid"
        if code in tls.VERIFY_UNKNOWN_CA:
            return "unknown CA"
        return str(error.verify_message or error.reason or error)
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) or not isinstance(error, ssl.SSLError):
        return None
    reason = str(error.reason or "")
    return _ALERTS.get(reason, reason.lower().replace("_", " ") or str(error))


class RefusedHandshakes:
    """Logs refused TLS handshakes at warning level, rate-limited so a flood cannot fill the log.

    At most one line per peer host and reason per ``interval`` seconds; the next line
    says how many were not logged in between.
    """

    MAX_KEYS = 4096

    def __init__(self, *, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, peer: Any, error: BaseException) -> bool:
        """Records one failed handshake from ``peer`` (``(host, port, ...)``); returns whether a line was logged."""
        reason = refusal_reason(error)
        if reason is None:
            log.debug("TLS handshake from %s ended: %s", _address(peer), error)
            return False
        host = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
        now = self.clock()
        last, unlogged = self._seen.get((host, reason), (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[(host, reason)] = (last, unlogged + 1)
            return False
        if len(self._seen) >= self.MAX_KEYS:
            self._seen = {key: value for key, value in self._seen.items() if now - value[0] < self.interval}
        self._seen[(host, reason)] = (now, 0)
        more = f" ({unlogged} more from {host} in the last {now - last:.0f} s)" if last is not None and unlogged else ""
        log.warning("TLS handshake from %s refused: %s%s", _address(peer), reason, more)
        return True


def _address(peer: Any) -> str:
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "unknown peer")


class _ObservedTls(sslproto.SSLProtocol):
    """asyncio's server-side TLS protocol, remembering the peer address for :class:`RefusedHandshakes`.

    Its read buffer is one TLS record (16 KiB plus overhead), not asyncio's 256 KiB: the
    buffer is allocated, zeroed, with each connection, so a flood of handshakes would
    otherwise hold 256 KiB per pending connection.
    """

    max_size = 17 * 1024
    peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)  # type: ignore[arg-type]


def observed_tls(
    protocol_factory: Callable[..., asyncio.BaseProtocol], context: ssl.SSLContext,
    refusals: RefusedHandshakes | None = None,
) -> Callable[..., asyncio.BaseProtocol]:
    """A protocol factory terminating TLS itself, so that refused handshakes are logged with the peer's address.

    uvicorn (and asyncio or uvloop under it) drop a failed handshake without a word:
    the HTTP protocol never sees the connection. Served with this factory (as uvicorn's
    ``http=``, with uvicorn's own ``ssl`` unset), each connection
    is asyncio's TLS protocol around ``protocol_factory(...)``; the HTTP protocol sees
    the same TLS transport as before (``ssl_object``, ``peername``, scheme ``https``).
    """
    refusals = refusals if refusals is not None else RefusedHandshakes()

    def factory(*args: Any, **kwargs: Any) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        protocol = _ObservedTls(loop, protocol_factory(*args, **kwargs), context, waiter, server_side=True,
                                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS)

        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is not None:
                refusals.refused(protocol.peer, future.exception())  # type: ignore[arg-type]

        waiter.add_done_callback(done)
        return protocol

    return factory
