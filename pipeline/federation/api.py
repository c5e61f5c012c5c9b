"""The coordinator's HTTPS server: Starlette on uvicorn, mutual TLS, JSON and Arrow.

Every request arrives over TLS with a client certificate from the federation CA (the
handshake refuses anything else). The certificate names the caller
(:func:`pipeline.federation.tls.peer_identity`), which must be enrolled with that role
(:func:`pipeline.federation.tls.authorize`): sites may only call ``/v1/site/...``,
analysts and operators only ``/v1/jobs...`` (403 otherwise). Within its role a caller
reaches only its own jobs: an analyst those it submitted (another analyst's job is a
404, the answer for an unknown job), a site those that invite it (403 otherwise); an
operator reads every job but submits none. :data:`ACCESS_RULES`
states each route's rule, once; the handlers apply it and the OpenAPI description
quotes it. A ``{job_id}`` that is not a job ID
(:data:`pipeline.federation.job_spec.JOB_ID_PATTERN`) is refused (422) before anything
is looked up. Every certificate must also be the one the federation roster in use lists
for its name and role: an operator installs a newer roster with ``PUT /v1/roster``
(revoking or renewing certificates without a restart), and sites fetch it with ``GET
/v1/roster`` and verify it themselves. Sites never accept connections: they long-poll ``GET /v1/site/work`` for
what to do next and upload their protocol messages.

Uploads are bounded (413 above ``max_message_bytes``), idempotent by message ID (the
same ID and bytes again: 200; the same ID with other bytes: 409), and checked against
the job's current round and stage (409 naming the expected ones; 422 for malformed
content). The job, round, stage and sender are checked before a byte of the body is
read. Requests in progress and body bytes buffered are limited per caller and in all
(:mod:`pipeline.federation.limits`: 429 with ``Retry-After``, never a queue). The job engine (:class:`pipeline.federation.coordinator.Coordinator`) does the
work in worker threads; a background task closes stages at their deadlines.

uvicorn does not put the client certificate in the ASGI scope, so the server uses a
small subclass of its h11 protocol that reads it from the connection's SSL object and
exposes it as the ASGI TLS extension (``scope["extensions"]["tls"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.analyses.registry import ANALYSIS_NAMES
from pipeline.errors import (
    REFUSAL_CODES, AggregationAborted, ConfigurationError, GenofedError, IdentityError, InputError, JobPruned,
    MessageConflict, NotFoundError, ProtocolError, disk_full,
)
from pipeline.federation import tls, wire
from pipeline.federation.audit import AuditLog
from pipeline.federation.config import CoordinatorConfig, Retention, load_coordinator_config
from pipeline.federation.coordinator import Coordinator
from pipeline.federation.handshakes import observed_tls
from pipeline.federation.job_spec import JOB_ID_PATTERN, check_job_id
from pipeline.federation.limits import BodyQuota, Overloaded, RequestLimiter
from pipeline.federation.operations import SiteContacts, federation_status
from pipeline.federation.roster import Roster, check_enrolment, install_roster, load_roster
from pipeline.federation.rounds import KEY_UNION_STAGE, PREFLIGHT_STAGE
from pipeline.federation.store import Store
from pipeline.federation.tls import load_identity_key
from pipeline.secagg.messages import Stage
from pipeline.secagg.prg import DEFAULT_PRG, PRGS

log = logging.getLogger(__name__)

__all__ = [
    "ACCESS_RULES",
    "AccessRule",
    "JobScope",
    "MAX_WAIT_SECONDS",
    "PEER_CERT_STATE_KEY",
    "build_coordinator",
    "create_app",
    "openapi_document",
    "serve",
]

MAX_WAIT_SECONDS = 30.0
"""Longest long poll a site may ask for."""

MAX_CONTROL_BYTES = 1 << 20
"""Largest JSON control body (job specs, declines)."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects in a JSON control body (a job spec needs a few)."""

PEER_CERT_STATE_KEY = "genofed.peer_certificate_der"
_TICK_SECONDS = 0.25
_POLL_SECONDS = 0.05
_Handler = Callable[[Request, tls.Identity], Awaitable[Response]]


class JobScope(enum.Enum):
    """Which jobs a caller of an allowed role reaches through a route's ``{job_id}``."""

    NONE = "none"
    """The route names no job."""
    OWNER = "owner"
    """The analyst who submitted the job (for another analyst it does not exist: 404), or any operator."""
    PARTICIPANT = "participant"
    """A site the job invites; another site is refused (403)."""


@dataclass(frozen=True)
class AccessRule:
    """Who may call one route.

    Checked in this order, each before anything of the next is looked at: the
    certificate's role and enrolment (403), the ``{job_id}`` against
    :data:`~pipeline.federation.job_spec.JOB_ID_PATTERN` (422, before the store is
    read), then ``job`` (404 or 403, before the handler runs).

    Attributes:
        roles: certificate roles that may call it, each enrolled in ``coordinator.toml``;
            empty: any participant certificate of the federation CA, enrolled or not.
        job: the jobs that caller reaches (:class:`JobScope`).
        rule: the rule in words, as the OpenAPI description gives it.
    """

    roles: tuple[str, ...]
    job: JobScope
    rule: str


_OWNER_RULE = (
    "the enrolled analyst who submitted the job, or an enrolled operator. Another analyst gets 404, word for word "
    "the answer for a job that does not exist, so that a job's existence is not revealed; a site gets 403"
)
_READERS = ("analyst", "operator")
_PARTICIPANT_RULE = "an enrolled site that the job invites. Another site, or an analyst, gets 403"

ACCESS_RULES: Mapping[tuple[str, str], AccessRule] = MappingProxyType({
    ("GET", "/openapi.json"): AccessRule((), JobScope.NONE,
        "any client with a participant certificate of the federation CA, enrolled or not: the description is public"),
    ("GET", "/v1/health"): AccessRule(("site", "analyst", "operator"), JobScope.NONE, "any enrolled participant"),
    ("POST", "/v1/jobs"): AccessRule(("analyst",), JobScope.NONE,
        "any enrolled analyst; the job is recorded as theirs, and only they (and operators) can see it; "
        "an operator or a site gets 403"),
    ("GET", "/v1/jobs"): AccessRule(_READERS, JobScope.NONE,
        "any enrolled analyst, who is listed their own jobs only, or operator, who is listed every job; a site gets 403"),
    ("GET", "/v1/jobs/{job_id}"): AccessRule(_READERS, JobScope.OWNER, _OWNER_RULE),
    ("GET", "/v1/jobs/{job_id}/results"): AccessRule(_READERS, JobScope.OWNER, _OWNER_RULE),
    ("GET", "/v1/jobs/{job_id}/results/{name}"): AccessRule(_READERS, JobScope.OWNER, _OWNER_RULE),
    ("GET", "/v1/jobs/{job_id}/files/{name}"): AccessRule(_READERS, JobScope.OWNER, _OWNER_RULE),
    ("POST", "/v1/jobs/{job_id}/cancel"): AccessRule(_READERS, JobScope.OWNER, _OWNER_RULE),
    ("GET", "/v1/site/work"): AccessRule(("site",), JobScope.NONE,
        "any enrolled site; its tasks and active jobs are only those of jobs that invite it"),
    ("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/state"): AccessRule(("site",), JobScope.PARTICIPANT, _PARTICIPANT_RULE),
    ("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/message"): AccessRule(
        ("site",), JobScope.PARTICIPANT, _PARTICIPANT_RULE),
    ("PUT", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/messages/{message_id}"): AccessRule(
        ("site",), JobScope.PARTICIPANT, _PARTICIPANT_RULE),
    ("POST", "/v1/site/jobs/{job_id}/decline"): AccessRule(("site",), JobScope.PARTICIPANT, _PARTICIPANT_RULE),
    ("POST", "/v1/site/checkpoint"): AccessRule(("site",), JobScope.NONE,
        "any enrolled site, with a checkpoint of its own audit log signed by its own certificate key"),
    ("GET", "/v1/federation"): AccessRule(("operator",), JobScope.NONE,
        "any enrolled operator: each site's last contact, the jobs, the store's size and the audit log's head; "
        "an analyst or a site gets 403"),
    ("POST", "/v1/federation/prune"): AccessRule(("operator",), JobScope.NONE,
        "any enrolled operator: removes the contributions and results of jobs that ended long enough ago (never a "
        "running job), leaving each a tombstone and an audit entry; an analyst or a site gets 403"),
    ("GET", "/v1/roster"): AccessRule((), JobScope.NONE,
        "any client with a participant certificate of the federation CA, enrolled, revoked or not: the roster is public "
        "and signed by the CA, and a revoked participant learns from it that it was revoked"),
    ("PUT", "/v1/roster"): AccessRule(("operator",), JobScope.NONE,
        "any enrolled operator, with a roster signed by the federation CA and newer than the one in use"),
})
"""Every route of the coordinator, ``(method, path)``, and who may call it: the one table of access rules.

:func:`create_app` serves exactly these routes, each behind its rule, and
:func:`openapi_document` describes each with its rule's words.
"""


class PeerCertificateH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, recording the verified client certificate per connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        # app_state is copied into every request's scope["state"]; a per-connection copy.
        self.app_state = {**self.app_state, PEER_CERT_STATE_KEY: der}


def _peer_certificate(scope: Mapping[str, Any]) -> bytes | None:
    """The client certificate (DER or PEM) from the ASGI TLS extension or the connection."""
    extension = scope.get("extensions", {}).get("tls") or {}
    chain = extension.get("client_cert_chain")
    if chain:
        first = chain[0]
        return first.encode() if isinstance(first, str) else bytes(first)
    state = scope.get("state") or {}
    return state.get(PEER_CERT_STATE_KEY)


class _TlsExtension:
    """ASGI middleware: exposes the connection's client certificate as the TLS extension."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self.limiter: RequestLimiter | None = None
        self.contacts: SiteContacts | None = None
        self.stop_long_polls: Callable[[], None] = lambda: None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            der = (scope.get("state") or {}).get(PEER_CERT_STATE_KEY)
            extensions = scope.setdefault("extensions", {})
            if der is not None and "tls" not in extensions:
                pem = ssl.DER_cert_to_PEM_cert(der)
                extensions["tls"] = {"client_cert_chain": [pem], "server_cert": None}
        await self.app(scope, receive, send)


class _TooLarge(GenofedError):
    pass


_STATUS = (
    (Overloaded, 429),
    (_TooLarge, 413),
    (JobPruned, 410),
    (IdentityError, 403),
    (NotFoundError, 404),
    (MessageConflict, 409),
    (AggregationAborted, 409),
    (ProtocolError, 422),
    (ConfigurationError, 422),
    (InputError, 422),
)


DISK_FULL_RETRY_SECONDS = 30
"""What a 507 asks a client to wait: space is freed by an operator, not in a second."""


def _error_response(error: Exception) -> JSONResponse:
    if disk_full(error):
        # Nothing of the request was kept (a staged body is discarded, a failed commit rolls back):
        # the same upload can be sent again once space is freed, and the job resumes.
        log.error("coordinator disk full: %s; refusing writes with 507 until space is freed", error)
        return JSONResponse({"error": "DiskFull", "detail": "coordinator disk full: nothing of this request was kept; "
                             "send it again once the operator has freed space"},
                            status_code=507, headers={"Retry-After": str(DISK_FULL_RETRY_SECONDS)})
    for cls, status in _STATUS:
        if isinstance(error, cls):
            headers = {"Retry-After": str(Overloaded.retry_after_seconds)} if status == 429 else None
            return JSONResponse({"error": type(error).__name__, "detail": str(error)}, status_code=status, headers=headers)
    log.exception("internal error", exc_info=error)
    return JSONResponse({"error": "InternalError", "detail": "internal error; see the coordinator's log"}, status_code=500)


async def _read_body(request: Request, limit: int, quota: BodyQuota) -> bytes:
    """The body, at most ``limit`` bytes (413), every byte reserved in ``quota`` before it is read (429)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise _TooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes (max_message_bytes)")
        quota.reserve(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body exceeds the limit of {limit} bytes (max_message_bytes)")
        if size > quota.reserved:
            quota.reserve(size - quota.reserved)
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard_body(request: Request, limit: int) -> None:
    """Reads and drops up to ``limit`` bytes of an upload refused before its body was read.

    The client is still sending it; draining lets it read the refusal rather than a reset
    connection. Nothing is kept, so a refused upload costs bandwidth, never memory.
    """
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return


async def _json_body(request: Request, quota: BodyQuota) -> dict[str, Any]:
    body = await _read_body(request, MAX_CONTROL_BYTES, quota)
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"request body is not valid JSON ({error})") from None
    except RecursionError:
        raise ProtocolError(f"request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise ProtocolError("request body must be a JSON object")
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise ProtocolError(f"request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    return value


def _json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _int_param(request: Request, name: str) -> int:
    value = request.path_params[name]
    if not str(value).isdigit():
        raise ProtocolError(f"path parameter {name} must be a non-negative integer, got {value!r}")
    return int(value)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the coordinator's API (served at /openapi.json).

    Parameters, bodies and answers are described as the server checks them, so a
    fuzzer driven by this document (``tests/federation/test_fuzz.py``) reaches the
    handlers' own validation rather than only the router's 404s.
    """
    arrow = wire.ARROW_MEDIA_TYPE
    error = {"$ref": "#/components/schemas/Error"}

    def answers(codes: dict[str, str], *, ok_schema: dict[str, Any] | None = None, ok_media: str = "application/json") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for code, text in codes.items():
            if code.startswith("2"):
                media = {ok_media: {"schema": ok_schema or ({"type": "string", "format": "binary"} if ok_media == arrow else {"type": "object"})}}
            else:
                media = {"application/json": {"schema": error}}
            out[code] = {"description": text, "content": media}
        return out

    def op(method: str, path: str, summary: str, codes: dict[str, str], *, params: tuple[dict[str, Any], ...] = (),
           body: dict[str, Any] | None = None, ok_schema: dict[str, Any] | None = None, ok_media: str = "application/json") -> dict[str, Any]:
        rule = ACCESS_RULES[(method, path)]
        refused = {"403": f"the caller is not an enrolled {' or '.join(rule.roles)}"} if rule.roles else {}
        if rule.job is JobScope.OWNER:
            refused = {"403": "the caller is not an enrolled analyst or operator",
                       "404": "no such job, or another analyst's (the same answer: a job's existence is not revealed)"}
        elif rule.job is JobScope.PARTICIPANT:
            refused = {"403": "the caller is not an enrolled site, or not one the job invites"}
        if rule.job is not JobScope.NONE:
            refused["422"] = (codes["422"] + ", or " if "422" in codes else "") + "a job ID that does not match its pattern"
        busy = {"429": "too many requests or body bytes in progress, the caller's or the server's: retry after Retry-After seconds",
                "507": "the coordinator's disk is full: nothing was kept; retry after Retry-After seconds"}
        out: dict[str, Any] = {
            "summary": summary,
            "description": f"Who may call: {rule.rule} (client certificate from the federation CA, mutual TLS).",
            "responses": answers({**codes, **refused, **busy}, ok_schema=ok_schema, ok_media=ok_media),
        }
        if params:
            out["parameters"] = list(params)
        if body is not None:
            out["requestBody"] = {"required": True, "content": body}
        return out

    def path_param(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": schema, "description": text}

    job_id = path_param("job_id", {"type": "string", "pattern": JOB_ID_PATTERN},
                        "a job ID as POST /v1/jobs answered it: job-YYYYmmdd-HHMMSS- and 8 lowercase hex digits")
    round_index = path_param("round_index", {"type": "integer", "minimum": 0}, "the round, from 0")
    stage = path_param("stage", {"type": "string", "enum": [PREFLIGHT_STAGE, KEY_UNION_STAGE, *(s.value for s in Stage)]}, "the stage of the round")
    message_id = path_param("message_id", {"type": "string", "pattern": "^[A-Za-z0-9._-]{8,128}$"},
                            "the site's ID for this payload: the same ID and bytes again are a duplicate, not a new message")
    name = path_param("name", {"type": "string", "minLength": 1, "maxLength": 200}, "a table name from the results listing")
    file_name = path_param("name", {"type": "string", "minLength": 1, "maxLength": 200}, "a file name from the results listing")
    spec = {
        "type": "object",
        "required": ["analysis"],
        "properties": {
            "analysis": {"type": "string", "enum": sorted(ANALYSIS_NAMES)},
            "sites": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "threshold": {"type": "integer", "minimum": 2},
            "stage_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            "consistency_check": {"type": "boolean"},
            "num_neighbours": {"type": "integer", "minimum": 1},
            "mask_prg": {"type": "string", "enum": list(PRGS), "default": DEFAULT_PRG},
            "description": {"type": "string"},
        },
        "additionalProperties": True,
        "description": "runtime keys above; every other key is a parameter of the analysis",
    }
    common = {"404": "no such job"}
    paths: dict[str, dict[str, Any]] = {}

    def add(method: str, path: str, summary: str, codes: dict[str, str], **kwargs: Any) -> None:
        paths.setdefault(path, {})[method.lower()] = op(method, path, summary, codes, **kwargs)

    add("GET", "/v1/health", "Liveness and the federation's name", {"200": "ok"})
    add("POST", "/v1/jobs", "Submit a job spec",
        {"201": "job created", "413": "body too large", "422": "not JSON, or an invalid spec (the detail names the key)"},
        body={"application/json": {"schema": {"type": "object", "required": ["spec"], "properties": {"spec": spec}}}},
        ok_schema={"type": "object", "required": ["job_id"], "properties": {"job_id": {"type": "string", "pattern": JOB_ID_PATTERN}}})
    add("GET", "/v1/jobs", "The jobs the caller may see, newest first", {"200": "the jobs"},
        ok_schema={"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": {"type": "object"}}}})
    add("GET", "/v1/jobs/{job_id}", "Job status; with wait, a long poll that answers when the job ends",
        {"200": "status", "422": "wait is not a number", **common},
        params=(job_id, {"name": "wait", "in": "query", "required": False,
                         "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                         "description": "seconds to wait for a running job to end (longer values are capped); "
                                        "the answer is the status at that moment"}))
    add("GET", "/v1/jobs/{job_id}/results", "Result summary, table names and file names",
        {"200": "results", "409": "the job is not done", **common}, params=(job_id,))
    add("GET", "/v1/jobs/{job_id}/results/{name}", "One result table (Arrow IPC stream)",
        {"200": "the table", **common, "409": "the job is not done"}, params=(job_id, name), ok_media=arrow)
    add("GET", "/v1/jobs/{job_id}/files/{name}", "One file the analysis rendered from the result (a report, a plot, GWAS-SSF)",
        {"200": "the file's bytes", **common, "409": "the job is not done"}, params=(job_id, file_name),
        ok_media="application/octet-stream")
    add("POST", "/v1/jobs/{job_id}/cancel", "Cancel a running job: its sites stop at their next poll",
        {"200": "cancelled: the job's status", "409": "the job has already ended (done, failed or cancelled)", **common},
        params=(job_id,))
    add("GET", "/v1/site/work", "Long poll for the site's next task",
        {"200": "a task or null, and the site's active jobs", "422": "wait is not a number"},
        params=(
            {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
             "description": "seconds to wait for a task (longer values are capped)"},
            {"name": "active", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "comma-separated job IDs the site knows as running: the answer comes at once when they changed"},
        ),
        ok_schema={"type": "object", "required": ["task", "active_jobs"],
                   "properties": {"task": {"type": ["object", "null"]}, "active_jobs": {"type": "array", "items": {"type": "string"}}}})
    add("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/state", "Public job state a round started from",
        {"200": "the state (JSON)", "404": "no such job or round", "422": "malformed round index"}, params=(job_id, round_index))
    add("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/message",
        "The server's protocol message for this site and stage (Arrow IPC)",
        {"200": "the message", "404": "no such job, or no message for this site", "409": "another round or stage is in progress",
         "422": "malformed round index"},
        params=(job_id, round_index, stage), ok_media=arrow)
    add("PUT", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/messages/{message_id}",
        "Upload this site's protocol message for a stage (idempotent by message id)",
        {"201": "accepted", "200": "duplicate of an accepted message", "404": "no such job",
         "409": "another round or stage, a replay, or the id reused with other content", "413": "too large",
         "422": "malformed message or parameters"},
        params=(job_id, round_index, stage, message_id),
        body={arrow: {"schema": {"type": "string", "format": "binary"}}},
        ok_schema={"type": "object", "required": ["status", "message_id", "digest"],
                   "properties": {"status": {"enum": ["accepted", "duplicate"]}, "message_id": {"type": "string"}, "digest": {"type": "string"}}})
    add("POST", "/v1/site/jobs/{job_id}/decline",
        "Refuse a job (site policy): a coarse code and its public meaning, never the site's data",
        {"200": "recorded", "413": "body too large", "422": "no reason, or no refusal code", **common},
        params=(job_id,),
        body={"application/json": {"schema": {"type": "object", "required": ["reason"], "properties": {"reason": {
            "type": "string", "minLength": 1, "maxLength": 2000,
            "pattern": f"^({'|'.join(REFUSAL_CODES)}): ",
            "description": "CODE: text, CODE one of " + ", ".join(REFUSAL_CODES)}}}}})
    checkpoint_schema = {"type": "object", "required": ["format", "federation", "signer", "role", "entries", "head", "time", "signature"],
                         "properties": {"format": {"const": "genofed-audit-checkpoint/1"}, "entries": {"type": "integer", "minimum": 1},
                                        "head": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "role": {"enum": ["site", "coordinator"]},
                                        "federation": {"type": "string"}, "signer": {"type": "string"}, "time": {"type": "string"},
                                        "signature": {"type": "string"}}}
    add("POST", "/v1/site/checkpoint",
        "Exchange signed audit heads: the site's is kept in the coordinator's audit log, the coordinator's comes back",
        {"200": "the coordinator's signed head", "403": "not the site's own checkpoint, or a bad signature",
         "413": "body too large", "422": "not a checkpoint"},
        body={"application/json": {"schema": {"type": "object", "required": ["checkpoint"], "properties": {"checkpoint": checkpoint_schema}}}},
        ok_schema={"type": "object", "required": ["checkpoint"], "properties": {"checkpoint": checkpoint_schema}})
    roster_schema = {"type": "object", "required": ["format", "federation", "version", "issued", "participants", "signature"],
                     "properties": {"format": {"const": "genofed-roster/1"}, "federation": {"type": "string"},
                                    "version": {"type": "integer", "minimum": 1}, "issued": {"type": "string"},
                                    "participants": {"type": "array", "items": {"type": "object"}},
                                    "signature": {"type": "string"}}}
    add("GET", "/v1/roster", "The federation roster in use, signed by the CA (verify it: the coordinator is not trusted with it)",
        {"200": "the signed roster", "404": "the coordinator runs without a roster"}, ok_schema=roster_schema)
    add("PUT", "/v1/roster", "Install a newer federation roster: from the next request on, only the certificates it lists get in",
        {"200": "installed, or the same roster again (unchanged)", "413": "body too large",
         "422": "not signed by the federation CA, malformed, not newer than the roster in use, or without this coordinator"},
        body={"application/json": {"schema": roster_schema}},
        ok_schema={"type": "object", "required": ["status", "version"], "properties": {
            "status": {"enum": ["installed", "unchanged"]}, "version": {"type": "integer"}, "participants": {"type": "integer"}}})
    add("GET", "/v1/federation", "The running federation: sites' last contact, jobs, store size, audit log head",
        {"200": "the federation's status"},
        ok_schema={"type": "object", "required": ["federation", "sites", "jobs", "store", "audit"]})
    add("POST", "/v1/federation/prune",
        "Apply the retention policy: remove ended jobs' contributions and results, keep a tombstone and an audit entry",
        {"200": "what was (or, with dry_run, would be) removed and the bytes freed", "413": "body too large",
         "422": "older_than_seconds is not a number >= 0"},
        body={"application/json": {"schema": {"type": "object", "required": ["older_than_seconds"], "properties": {
            "older_than_seconds": {"type": "number", "minimum": 0}, "dry_run": {"type": "boolean"}}}}},
        ok_schema={"type": "object", "required": ["dry_run", "jobs", "bytes_freed"]})
    described = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert described == set(ACCESS_RULES) - {("GET", "/openapi.json")}, "every route of ACCESS_RULES is described"
    return {
        "openapi": "3.1.0",
        "info": {"title": "genofed coordinator", "version": "1", "description": __doc__.split("\n\n")[0]},
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
        "paths": paths,
    }


class _Changes:
    """Wakes the long polls as soon as a call through the app has changed the engine (its ``version``).

    A stage that closes reaches the waiting sites at once instead of at their next
    check, after the closing call has committed and written its audit entries. A change
    made outside the app (a test driving the engine directly) is still seen within
    ``_POLL_SECONDS``.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._seen = coordinator.version
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event = asyncio.Event()
        self.stopping = False

    def stop(self) -> None:
        """Called in the event loop when the server starts to shut down: every long poll answers now.

        A poll otherwise holds its connection up to :data:`MAX_WAIT_SECONDS`, and a graceful
        shutdown waits for it; the site polls again, finds the server gone and retries.
        """
        self.stopping = True
        self._event.set()

    def notify(self) -> None:
        """Called in the event loop after every engine call: wakes the waiters if the version moved."""
        if self._coordinator.version != self._seen:
            self._seen = self._coordinator.version
            self._event.set()
            self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Returns at the next change, or after ``seconds``."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # an event belongs to the loop that first waits on it
            self._loop, self._event = loop, asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


def _wait_seconds(request: Request) -> float:
    """A long poll's ``wait`` query parameter in seconds: 0 when absent, at most :data:`MAX_WAIT_SECONDS`."""
    try:
        return min(max(float(request.query_params.get("wait", "0")), 0.0), MAX_WAIT_SECONDS)
    except ValueError:
        raise ProtocolError("query parameter wait must be a number of seconds") from None


def create_app(coordinator: Coordinator, config: CoordinatorConfig, *, tick_seconds: float = _TICK_SECONDS) -> Any:
    """The ASGI application of a coordinator (Starlette, wrapped for the TLS extension)."""

    handlers: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}
    limiter = RequestLimiter(config.limits)
    contacts = SiteContacts()

    changes = _Changes(coordinator)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        finally:
            changes.notify()

    async def admit(request: Request, who: tls.Identity, rule: AccessRule) -> tls.Identity:
        """Applies ``rule`` to the request, in the order :class:`AccessRule` gives; returns the caller."""
        if not rule.roles:
            return who
        tls.authorize(who, config, roles=rule.roles, roster=coordinator.roster)
        if rule.job is JobScope.NONE:
            return who
        job_id = check_job_id(request.path_params["job_id"])
        if rule.job is JobScope.OWNER:
            await call(coordinator.job, job_id, analyst=None if who.role == "operator" else who.name)
        elif who.name not in (await call(coordinator.job, job_id)).participants:
            raise IdentityError(f"site {who.name!r} is not a participant of job {job_id}")
        return who

    def endpoint(method: str, path: str) -> Callable[[_Handler], _Handler]:
        """Serves ``handler`` at ``method path`` behind its rule in :data:`ACCESS_RULES`."""
        rule = ACCESS_RULES[(method, path)]

        def wrap(handler: _Handler) -> _Handler:
            @functools.wraps(handler)
            async def run(request: Request) -> Response:
                try:
                    who = tls.peer_identity(_peer_certificate(request.scope))
                    with limiter.request(f"{who.role}:{who.name}") as quota:
                        request.state.body_quota = quota
                        who = await admit(request, who, rule)
                        if who.role == "site" and "site" in rule.roles:
                            contacts.seen(who.name)
                        return await handler(request, who)
                except Exception as error:  # noqa: BLE001 -- every error becomes a JSON answer
                    if disk_full(error):
                        coordinator.note_disk_full(str(error))
                    return _error_response(error)

            handlers[(method, path)] = run
            return handler

        return wrap

    @endpoint("GET", "/v1/health")
    async def health(request: Request, who: tls.Identity) -> Response:
        return JSONResponse({"status": "ok", "federation": config.federation, "you": who.name, "role": who.role})

    @endpoint("GET", "/openapi.json")
    async def openapi(request: Request, who: tls.Identity) -> Response:
        return JSONResponse(openapi_document())

    @endpoint("POST", "/v1/jobs")
    async def submit(request: Request, who: tls.Identity) -> Response:
        body = await _json_body(request, request.state.body_quota)
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise ProtocolError("the body must be {'spec': {...the job spec...}}")
        job_id = await call(coordinator.submit, spec, who.name)
        return JSONResponse({"job_id": job_id}, status_code=201)

    @endpoint("GET", "/v1/jobs")
    async def list_jobs(request: Request, who: tls.Identity) -> Response:
        jobs = await call(coordinator.list_jobs, analyst=None if who.role == "operator" else who.name)
        return JSONResponse({"jobs": jobs})

    @endpoint("GET", "/v1/jobs/{job_id}")
    async def status(request: Request, who: tls.Identity) -> Response:
        deadline = asyncio.get_running_loop().time() + _wait_seconds(request)
        version = coordinator.version  # read first: a change during the status call is not missed
        answer = await call(coordinator.status, request.path_params["job_id"])
        # A long poll: `genofed job wait` sees the end at once, with a request every MAX_WAIT_SECONDS.
        while (answer["status"] == "running" and not changes.stopping
               and (left := deadline - asyncio.get_running_loop().time()) > 0):
            await changes.wait(min(left, _POLL_SECONDS))
            if coordinator.version != version:
                version = coordinator.version
                answer = await call(coordinator.status, request.path_params["job_id"])
        return JSONResponse(answer)

    @endpoint("GET", "/v1/jobs/{job_id}/results")
    async def results(request: Request, who: tls.Identity) -> Response:
        return JSONResponse(await call(coordinator.results, request.path_params["job_id"]))

    @endpoint("GET", "/v1/jobs/{job_id}/results/{name}")
    async def result_table(request: Request, who: tls.Identity) -> Response:
        body = await call(coordinator.result_item, request.path_params["job_id"], request.path_params["name"], "table")
        return Response(body, media_type=wire.ARROW_MEDIA_TYPE)

    @endpoint("GET", "/v1/jobs/{job_id}/files/{name}")
    async def result_file(request: Request, who: tls.Identity) -> Response:
        body = await call(coordinator.result_item, request.path_params["job_id"], request.path_params["name"], "file")
        return Response(body, media_type="application/octet-stream")

    @endpoint("POST", "/v1/jobs/{job_id}/cancel")
    async def cancel(request: Request, who: tls.Identity) -> Response:
        return JSONResponse(await call(coordinator.cancel, request.path_params["job_id"], by=who.name, role=who.role))

    @endpoint("GET", "/v1/site/work")
    async def work(request: Request, who: tls.Identity) -> Response:
        deadline = asyncio.get_running_loop().time() + _wait_seconds(request)
        version = coordinator.version
        task = await call(coordinator.next_task, who.name)
        known = request.query_params.get("active")
        if known is not None and sorted(filter(None, known.split(","))) != await call(coordinator.active_jobs, who.name):
            deadline = 0.0  # the site's view of its jobs is stale: answer at once
        # Wait for a change (a task, or a job finishing), then answer: the site polls again.
        with contacts.polling(who.name):
            while (task is None and coordinator.version == version and not changes.stopping
                   and (left := deadline - asyncio.get_running_loop().time()) > 0):
                await changes.wait(min(left, _POLL_SECONDS))
        if task is None and coordinator.version != version:
            task = await call(coordinator.next_task, who.name)
        active = await call(coordinator.active_jobs, who.name)
        roster_version = coordinator.roster.version if coordinator.roster is not None else None
        return JSONResponse({"task": task, "active_jobs": active, "roster_version": roster_version})

    @endpoint("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/state")
    async def round_state(request: Request, who: tls.Identity) -> Response:
        state = await call(coordinator.round_state, who.name, request.path_params["job_id"], _int_param(request, "round_index"))
        return JSONResponse(state)

    @endpoint("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/message")
    async def stage_message(request: Request, who: tls.Identity) -> Response:
        body = await call(
            coordinator.stage_message, who.name, request.path_params["job_id"], _int_param(request, "round_index"),
            request.path_params["stage"],
        )
        return Response(body, media_type=wire.ARROW_MEDIA_TYPE)

    @endpoint("PUT", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/messages/{message_id}")
    async def upload(request: Request, who: tls.Identity) -> Response:
        message_id = request.path_params["message_id"]
        if not 8 <= len(message_id) <= 128 or not all(c.isalnum() or c in "-_." for c in message_id):
            raise ProtocolError("message id must be 8-128 characters of letters, digits, '-', '_' or '.'")
        job_id, round_index, stage = request.path_params["job_id"], _int_param(request, "round_index"), request.path_params["stage"]
        # Who may send what, now, is settled before the body is read: a refused upload costs no memory.
        try:
            await call(coordinator.check_receivable, who.name, job_id, round_index, stage, message_id)
        except GenofedError:
            await _discard_body(request, config.max_message_bytes)
            raise
        body = await _read_body(request, config.max_message_bytes, request.state.body_quota)
        receipt = await call(coordinator.receive, who.name, job_id, round_index, stage, message_id, body)
        return JSONResponse(receipt, status_code=201 if receipt["status"] == "accepted" else 200)

    @endpoint("POST", "/v1/site/jobs/{job_id}/decline")
    async def decline(request: Request, who: tls.Identity) -> Response:
        body = await _json_body(request, request.state.body_quota)
        reason = body.get("reason")
        if not isinstance(reason, str) or reason.partition(": ")[0] not in REFUSAL_CODES:
            raise ProtocolError(f"the body must be {{'reason': 'CODE: text'}} with CODE one of {', '.join(REFUSAL_CODES)}")
        await call(coordinator.decline, who.name, request.path_params["job_id"], reason)
        return JSONResponse({"status": "declined"})

    @endpoint("POST", "/v1/site/checkpoint")
    async def checkpoint(request: Request, who: tls.Identity) -> Response:
        body = await _json_body(request, request.state.body_quota)
        answer = await call(coordinator.exchange_checkpoint, who.name, body.get("checkpoint"))
        return JSONResponse({"checkpoint": answer})

    @endpoint("GET", "/v1/roster")
    async def get_roster(request: Request, who: tls.Identity) -> Response:
        roster = coordinator.roster
        if roster is None or roster.signed is None:
            raise NotFoundError("this coordinator runs without a federation roster")
        return JSONResponse(dict(roster.signed))

    @endpoint("PUT", "/v1/roster")
    async def put_roster(request: Request, who: tls.Identity) -> Response:
        body = await _json_body(request, request.state.body_quota)
        roster, installed = await call(replace_roster, body, who.name)
        return JSONResponse({"status": "installed" if installed else "unchanged", "version": roster.version,
                             "participants": len(roster.participants)})

    replacing = threading.Lock()

    def replace_roster(data: dict[str, Any], operator: str) -> tuple[Roster, bool]:
        """Verifies and installs a newer roster; from the next request on, only the certificates it lists get in."""
        with replacing:
            current = coordinator.roster
            if current is None:
                raise ConfigurationError("this coordinator runs without a federation roster; it takes none over the network")

            def lists_this_coordinator(roster: Roster) -> None:
                try:
                    roster.check_certificate("coordinator", "coordinator", config.cert.read_bytes())
                except GenofedError as error:
                    raise ConfigurationError(
                        f"roster version {roster.version} does not list this coordinator's certificate {config.cert} ({error}); "
                        "a coordinator with a new certificate takes its roster at restart: install both and restart it"
                    ) from None

            roster = install_roster(data, ca_cert_path=config.ca, current=current, path=config.roster,
                                    source="the roster sent to PUT /v1/roster", accept=lists_this_coordinator)
            if roster is current:
                return current, False
            coordinator.use_roster(roster, by=operator, digest=wire.digest(wire.canonical_json(dict(data))))
            log.warning("federation roster version %d installed (was %d), sent by operator %s",
                        roster.version, current.version, operator)
            return roster, True

    @endpoint("GET", "/v1/federation")
    async def federation(request: Request, who: tls.Identity) -> Response:
        return JSONResponse(await call(federation_status, coordinator, contacts, config))

    @endpoint("POST", "/v1/federation/prune")
    async def prune(request: Request, who: tls.Identity) -> Response:
        body = await _json_body(request, request.state.body_quota)
        older_than, dry_run = body.get("older_than_seconds"), body.get("dry_run", False)
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
            raise ProtocolError("the body must be {'older_than_seconds': N >= 0, 'dry_run': true|false}")
        if not isinstance(dry_run, bool):
            raise ProtocolError("dry_run must be true or false")
        log.info("operator %s prunes jobs that ended over %.0f s ago%s", who.name, older_than, " (dry run)" if dry_run else "",
                 extra={"event": "prune.requested", "operator": who.name, "older_than_seconds": older_than, "dry_run": dry_run})
        return JSONResponse(await call(coordinator.prune, older_than=float(older_than), dry_run=dry_run))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(tick_seconds)
                try:
                    await call(coordinator.tick)
                except Exception:  # noqa: BLE001 -- the deadline loop must outlive one bad round
                    log.exception("closing stages at their deadlines failed")

        async def retention(policy: Retention) -> None:
            while True:
                try:
                    pruned = await call(coordinator.prune, older_than=policy.older_than)
                    if pruned["jobs"]:
                        log.info("retention: pruned %d job(s), freed %d bytes", len(pruned["jobs"]), pruned["bytes_freed"],
                                 extra={"event": "retention.applied", "jobs": len(pruned["jobs"]),
                                        "bytes_freed": pruned["bytes_freed"]})
                except Exception:  # noqa: BLE001 -- the policy is retried at its next turn
                    log.exception("applying the retention policy failed")
                await asyncio.sleep(policy.every)

        task = asyncio.create_task(ticker())
        policy = getattr(config, "retention", None)  # a [retention] table: the policy applies itself
        pruner = asyncio.create_task(retention(policy)) if policy is not None else None
        try:
            yield
        finally:
            task.cancel()
            if pruner is not None:
                pruner.cancel()
            # A clean shutdown moves the WAL into the database (Store.close), so the database alone is complete.
            close = getattr(coordinator.store, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # the WAL is replayed at the next open; shutdown must go on
                    log.exception("checkpointing the database at shutdown failed")

    missing = sorted(set(ACCESS_RULES) - set(handlers))
    if missing:
        raise RuntimeError(f"routes of ACCESS_RULES without a handler: {missing}")
    routes = [Route(path, handlers[(method, path)], methods=[method]) for method, path in ACCESS_RULES]
    app = _TlsExtension(Starlette(routes=routes, lifespan=lifespan))
    app.limiter = limiter  # what is in flight now, for operators' checks and tests
    app.contacts = contacts
    app.stop_long_polls = changes.stop
    return app


def build_coordinator(config: CoordinatorConfig) -> Coordinator:
    """The job engine over the configured database and audit log (resumes running jobs).

    Before anything else, the federation roster is verified against the CA, and the
    coordinator's certificate and every enrolled site and analyst checked against it.

    Raises:
        ConfigurationError: the roster is missing or not the CA's, or the coordinator's
            certificate or an enrolled participant is not in it.
    """
    roster = load_roster(config.roster, config.ca)
    check_enrolment(config, roster)
    return Coordinator(Store(config.database), federation=config.federation, sites=roster.sites,
                       audit=AuditLog(config.audit_log), roster=roster, identity_key=load_identity_key(config.key))


class _CoordinatorServer(uvicorn.Server):
    """uvicorn's server, answering the app's long polls as soon as it starts to shut down (SIGTERM)."""

    def __init__(self, config: uvicorn.Config, stop_long_polls: Callable[[], None]) -> None:
        super().__init__(config)
        self._stop_long_polls = stop_long_polls

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self._stop_long_polls()
        await super().shutdown(sockets)


def coordinator_server(config: CoordinatorConfig, app: Any, *, host: str | None = None, port: int | None = None,
                       log_level: str = "warning", configure_logging: bool = True) -> uvicorn.Server:
    """The HTTPS server of ``app`` (:func:`create_app`) with mutual TLS, as ``genofed coordinator serve`` runs it.

    With ``configure_logging`` false, uvicorn installs no handlers of its own: its records
    go to those the CLI configured (structured logs stay one format).
    """
    server_config = uvicorn.Config(
        app, host=host or config.host, port=port or config.port, lifespan="on",
        # TLS terminated by handshakes.observed_tls, which logs refused handshakes (uvicorn's own TLS drops them silently).
        http=observed_tls(PeerCertificateH11Protocol, tls.server_context(config.cert, config.key, config.ca)),  # type: ignore[arg-type]
        log_level=log_level, access_log=False, timeout_keep_alive=int(MAX_WAIT_SECONDS) + 5,
        log_config=uvicorn.config.LOGGING_CONFIG if configure_logging else None,
    )
    server_config.load()
    return _CoordinatorServer(server_config, app.stop_long_polls)


def serve(config_path: Path | str, *, host: str | None = None, port: int | None = None, log_level: str = "warning",
          configure_logging: bool = True) -> None:
    """Runs the coordinator until interrupted: ``genofed coordinator serve --config FILE``.

    On SIGTERM or SIGINT it stops accepting connections, answers the sites' long polls,
    lets the requests in flight finish and checkpoints its database.

    Raises:
        ConfigurationError: the configuration, certificates or database are unusable.
    """
    config = load_coordinator_config(config_path)
    coordinator = build_coordinator(config)
    coordinator_server(config, create_app(coordinator, config), host=host, port=port, log_level=log_level,
                       configure_logging=configure_logging).run()
