"""The HTTPS client of the federation: mutual TLS, bounded retries with backoff.

Sites and analysts reach the coordinator only through :class:`Connection`. It knows
nothing of what the bodies mean (formats: :mod:`pipeline.federation.wire` and
:mod:`pipeline.federation.secagg_wire`) and imports neither secure aggregation, JAX,
Arrow nor NumPy. It speaks HTTP/1.1 with the standard library's ``http.client`` over
the federation's TLS context (kept-alive connections, one per concurrent request), so
``genofed job submit|status`` start in a fraction of a second.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography import x509

from pipeline.errors import ProtocolError
from pipeline.federation.json_wire import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE, canonical_json
from pipeline.federation.tls import (
    VERIFY_EXPIRED,
    VERIFY_HOSTNAME_MISMATCH,
    VERIFY_NOT_YET_VALID,
    VERIFY_UNKNOWN_CA,
    certificate_validity,
    client_context,
)

__all__ = ["Connection", "ConnectionFailure", "HttpError", "Response", "diagnose"]

FATAL_TRIES = 3
"""Tries before a connection failure that cannot fix itself (a certificate, the CA, the host name) is final."""


class HttpError(ProtocolError):
    """The coordinator answered with an error status; ``status`` and ``detail`` say which."""

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class ConnectionFailure(ProtocolError):
    """No HTTPS connection to the coordinator, with its cause named.

    Attributes:
        cause: ``expired``, ``not-yet-valid``, ``unknown-ca``, ``hostname``,
            ``handshake-refused``, ``plain-http`` (these cannot fix themselves:
            ``permanent``), or ``refused``, ``timeout``, ``disconnected``, ``other``
            (transient: retried).
        permanent: retrying cannot help; someone must change a certificate or a URL.
    """

    PERMANENT = frozenset({"expired", "not-yet-valid", "unknown-ca", "hostname", "untrusted", "handshake-refused",
                           "plain-http"})

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.permanent = cause in self.PERMANENT


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (a wrapped error keeps the ssl or socket error as its cause)."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return seen


def _date(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _server_validity(host: str, port: int, timeout: float = 5.0) -> tuple[dt.datetime, dt.datetime] | None:
    """The server certificate's validity, read without verifying it (to name the date it expired); ``None`` if unreadable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
    except (OSError, ValueError):
        return None
    return None if cert is None else (cert.not_valid_before_utc, cert.not_valid_after_utc)


def _verify_failure(error: ssl.SSLCertVerificationError, host: str, port: int, ca: Any) -> ConnectionFailure:
    code = error.verify_code
    if code in (VERIFY_EXPIRED, VERIFY_NOT_YET_VALID):
        validity = _server_validity(host, port)
        if code == VERIFY_EXPIRED:
            when = f" on {_date(validity[1])}" if validity else ""
            return ConnectionFailure("expired", f"the coordinator's certificate at {host}:{port} expired{when}; "
                                                "its operator must install a new one")
        when = f" before {_date(validity[0])}" if validity else ""
        return ConnectionFailure("not-yet-valid", f"the coordinator's certificate at {host}:{port} is not valid{when} "
                                                  "(check both clocks)")
    if code in VERIFY_UNKNOWN_CA:
        return ConnectionFailure("unknown-ca", f"the server at {host}:{port} has a certificate from an unknown CA (not the "
                                               f"federation CA in {ca}): another federation's coordinator, or the wrong URL")
    if code in VERIFY_HOSTNAME_MISMATCH:
        return ConnectionFailure("hostname", f"host name mismatch: the coordinator's certificate does not name {host!r}; "
                                             "use the host genofed provision was given (--host) in the coordinator URL")
    return ConnectionFailure("untrusted", f"the server certificate at {host}:{port} fails verification "
                                           f"({error.verify_message or error})")


_REFUSED_ALERTS = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED", "TLSV1_ALERT_ACCESS_DENIED",
})
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"})


def _handshake_refused(host: str, port: int) -> ConnectionFailure:
    return ConnectionFailure("handshake-refused", f"TLS handshake refused by the server at {host}:{port}: it rejected this "
                                                  "participant's certificate (expired, or not from the federation's CA)")


def _ssl_failure(error: ssl.SSLError, host: str, port: int, ca: Any) -> ConnectionFailure | None:
    if isinstance(error, ssl.SSLCertVerificationError):
        return _verify_failure(error, host, port, ca)
    reason = str(error.reason or "")
    if reason in _REFUSED_ALERTS:
        return _handshake_refused(host, port)
    if reason in _NOT_TLS:
        return ConnectionFailure("plain-http", f"the server at {host}:{port} does not speak TLS (a plain-HTTP server on that "
                                               "port?); check the port in the coordinator URL")
    return None


def _probe(host: str, port: int, context: ssl.SSLContext, timeout: float = 5.0) -> ConnectionFailure | None:
    """Tells a server that drops our handshake from one that merely closed a connection: one fresh request.

    Under TLS 1.3 the client's handshake ends before the server has checked the client
    certificate, and a server that rejects it just closes the connection: the client
    sees "Server disconnected". A fresh connection that gets no byte back says so.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                answer = tls.recv(1)
    except ssl.SSLError as error:
        failure = _ssl_failure(error, host, port, "the CA file")
        return failure if failure is not None else _handshake_refused(host, port)
    except (ConnectionResetError, BrokenPipeError):
        return _handshake_refused(host, port)
    except OSError:
        return None
    return _handshake_refused(host, port) if not answer else None


_URL_SAFE = "!#$%&'()*+,-./:;=?@[]_~"
"""Left as they are in a request's path and query; anything else (spaces, non-ASCII) is percent-encoded."""

_DROPPED = (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
            http.client.BadStatusLine, http.client.IncompleteRead)
"""What a connection the server closed under us raises (RemoteDisconnected is both a reset and a bad status line)."""


def diagnose(error: BaseException, base_url: str, *, ca: Any = None, context: ssl.SSLContext | None = None) -> ConnectionFailure:
    """Names the cause of a failed connection to ``base_url`` from the exception and its causes.

    Args:
        error: what the request raised (an ``OSError``, ``ssl.SSLError`` or
            ``http.client.HTTPException``, or an error whose ``__cause__`` chain holds one).
        base_url: the coordinator's URL (for its host and port).
        ca: the CA file, named in an "unknown CA" message.
        context: the client's TLS context; with it, a server that disconnects at once
            is probed once more to tell a refused handshake from a dropped connection.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    chain = _chain(error)
    for item in chain:
        if isinstance(item, ssl.SSLError):
            failure = _ssl_failure(item, host, port, ca)
            if failure is not None:
                return failure
    if any(isinstance(item, ConnectionRefusedError) for item in chain) or "connection refused" in str(error).lower():
        return ConnectionFailure("refused", f"connection refused at {host}:{port}: is the coordinator running, and is the "
                                            "port in the coordinator URL right?")
    if any(isinstance(item, TimeoutError) for item in chain):
        return ConnectionFailure("timeout", f"no answer from {host}:{port} in time ({type(error).__name__})")
    dropped = any(isinstance(item, _DROPPED) for item in chain)
    if dropped and context is not None:
        failure = _probe(host, port, context)
        if failure is not None:
            return failure
    cause = "disconnected" if dropped else "other"
    return ConnectionFailure(cause, f"{host}:{port}: {type(error).__name__}: {error}")


class Response:
    """An answer read in full (so that its connection can carry the next request)."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: http.client.HTTPMessage, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # case-insensitive (http.client's message)
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Connection:
    """An HTTPS client for one participant: mutual TLS, bounded retries with backoff.

    Transport failures (connection refused or reset, timeouts, 502/503/504), 429 (the
    coordinator's limits, :mod:`pipeline.federation.limits`) and 507 (its disk is full) are retried with exponential
    backoff and jitter, never sooner than a ``Retry-After`` asks, up to ``max_attempts``
    times (unbounded when ``None``: a site agent waits out a coordinator restart);
    answers with another error status raise :class:`HttpError` at once.

    A failure to connect is named (:func:`diagnose`); one that cannot fix itself (this
    participant's certificate expired, the server's CA unknown, a host name mismatch,
    the handshake refused by the server) raises :class:`ConnectionFailure` after
    :data:`FATAL_TRIES` tries, whatever ``max_attempts``. This participant's own
    certificate is checked before any connection: expired or not yet valid, it raises
    at once.
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
        self.cert, self.ca = cert, ca
        self.context = client_context(cert, key, ca)
        self.validity = certificate_validity(cert)
        self.timeout = timeout
        parts = urlsplit(self.base_url)
        self._host, self._port, self._prefix = parts.hostname or "", parts.port or 443, parts.path
        self._idle: list[http.client.HTTPSConnection] = []
        self._idle_lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, path: str, *, content: bytes = b"", json: Any = None, headers: Mapping[str, str] | None = None,
             timeout: float | None = None) -> Response:
        """One try of one request: the answer whatever its status, without retries.

        A kept-alive connection the server has closed meanwhile is replaced once, at
        once (the request never reached the server). ``json`` is sent as canonical JSON.

        Raises:
            OSError: the connection failed (``ssl.SSLError``, refused, reset, timeout).
            http.client.HTTPException: the server closed it or answered garbage.
        """
        headers = dict(headers or {})
        if json is not None:
            content = canonical_json(json)
            headers.setdefault("content-type", JSON_MEDIA_TYPE)
        seconds = self.timeout if timeout is None else timeout
        with self._idle_lock:
            connection = self._idle.pop() if self._idle else None
        reused = connection is not None
        if connection is None:
            connection = http.client.HTTPSConnection(self._host, self._port, context=self.context, timeout=seconds)
        connection.timeout = seconds
        if connection.sock is not None:
            connection.sock.settimeout(seconds)
        try:
            connection.request(method, quote(self._prefix + path, safe=_URL_SAFE), body=content or None, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            if reused and isinstance(error, _DROPPED):
                return self.send(method, path, content=content, headers=headers, timeout=timeout)
            raise
        if answer.will_close:
            connection.close()
        else:
            with self._idle_lock:
                self._idle.append(connection)
        self.bytes_sent += len(content)
        self.bytes_received += len(body)
        return Response(answer.status, answer.headers, body)

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), timeout: float | None = None, **kwargs: Any) -> Response:
        """One request with retries (``kwargs`` as :meth:`send` takes them); the answer, its status in ``ok``."""
        self.check_own_certificate()
        attempt = fatal = 0
        cause = "other"
        delay = self.backoff
        while True:
            attempt += 1
            not_before = 0.0
            try:
                response = self.send(method, path, timeout=timeout, **kwargs)
            except (OSError, http.client.HTTPException) as error:
                named = diagnose(error, self.base_url, ca=self.ca, context=self.context)
                cause, fatal = named.cause, fatal + 1 if named.permanent else 0
                if fatal >= FATAL_TRIES:
                    raise ConnectionFailure(named.cause, f"{method} {self.base_url}{path}: {named} "
                                                         f"({attempt} tries)") from None
                failure = str(named)
                status = None
            else:
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
                raise ConnectionFailure(cause, f"{method} {self.base_url}{path}: no answer after {attempt} attempts "
                                               f"({failure})")
            time.sleep(max(not_before, delay * random.uniform(0.5, 1.0)))  # jitter: retrying parties do not move in step
            delay = min(delay * 2, self.max_backoff)

    def wait_until_answering(self, path: str, *, timeout: float, interval: float = 0.05,
                             check: Callable[[], None] | None = None) -> None:
        """Returns once ``path`` answers 200: a server that is starting, tried every ``interval`` seconds.

        Not :meth:`request`'s backoff, which tries again up to a second or more after the
        server is up. ``check()``, called before each try, may raise (the server's process
        exited). A permanent failure (an expired certificate, an unknown CA) raises at once.

        Raises:
            ConnectionFailure: no answer within ``timeout`` seconds (the last failure named), or a permanent one.
        """
        self.check_own_certificate()
        deadline = time.monotonic() + timeout
        while True:
            if check is not None:
                check()
            try:
                response = self.send("GET", path, timeout=max(interval, 1.0))
            except (OSError, http.client.HTTPException) as error:
                failure = diagnose(error, self.base_url, ca=self.ca, context=self.context)
                if failure.permanent:
                    raise failure from None
            else:
                if response.status_code == 200:
                    return
                failure = ConnectionFailure("other", f"GET {self.base_url}{path}: {response.status_code} {_detail(response)}")
            if time.monotonic() > deadline:
                raise ConnectionFailure(failure.cause, f"no answer within {timeout:.0f} s: {failure}")
            time.sleep(interval)

    def check_own_certificate(self, now: dt.datetime | None = None) -> None:
        """Raises :class:`ConnectionFailure` (permanent) when this participant's certificate is expired or not yet valid.

        Checked before connecting: the server would refuse the handshake without saying why.
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        not_before, not_after = self.validity
        if now > not_after:
            raise ConnectionFailure("expired", f"this participant's certificate {self.cert} expired on {_date(not_after)}; "
                                               "the coordinator refuses it: ask the federation operator for a new one")
        if now < not_before:
            raise ConnectionFailure("not-yet-valid", f"this participant's certificate {self.cert} is not valid before "
                                                     f"{_date(not_before)} (check this machine's clock)")

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, value: Any, *, ok: tuple[int, ...] = (200, 201)) -> Any:
        return self.request("POST", path, ok=ok, json=value).json()

    def get_bytes(self, path: str) -> bytes:
        return bytes(self.request("GET", path).content)

    def put_bytes(self, path: str, body: bytes) -> Any:
        return self.request("PUT", path, ok=(200, 201), content=body, headers={"content-type": ARROW_MEDIA_TYPE}).json()


def _retry_after(response: Response) -> float:
    """Seconds a ``Retry-After`` header asks to wait (0 without one; capped at a minute)."""
    value = response.headers.get("retry-after", "")
    return min(float(value), 60.0) if value.isdigit() else 0.0


def _detail(response: Response) -> str:
    try:
        value = response.json()
        return str(value.get("detail", value))
    except ValueError:
        return response.text[:500]
