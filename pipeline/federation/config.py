"""Participant configuration files: ``coordinator.toml``, ``site.toml``, ``analyst.toml``.

Each participant of a federation has one TOML file (``genofed provision`` writes them;
``sites/template/site.toml`` explains every key). The loaders here are the only place
that reads them: every key is validated (an unknown key, a missing key or a value of
the wrong type is an error that names the file, the key and what was expected),
relative paths are resolved against the folder of the file, and a few ``GENOFED_*``
environment variables override settings that legitimately differ between the machine
that provisioned a federation and the one that runs it:

- ``GENOFED_COORDINATOR_URL``: the coordinator's URL, for sites and analysts (a site
  behind a proxy or a port forward reaches the coordinator at another address);
- ``GENOFED_COORDINATOR_HOST`` / ``GENOFED_COORDINATOR_PORT``: the address the
  coordinator binds (``0.0.0.0`` in a container).

Identities, keys and disclosure policy are never overridden from the environment.

A site's optional ``[sample_lists]`` table names its own sample lists, ``NAME = "PATH"``
(a file of IIDs, one per line, or plink's ``FID IID`` columns; ``#`` lines are comments).
A job selects samples by a list's name (``keep: NAME``, ``remove: NAME``), never by a path
or an ID; the site resolves the name here and declines a job naming a list it lacks
(``unknown-sample-list``) at its pre-flight.

The small TOML writer (:func:`render_toml`) serves ``genofed provision``; it writes
flat tables of strings, numbers, booleans and lists, with comments.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import ConfigurationError
from pipeline.federation.job_spec import THRESHOLD_RULES
from pipeline.federation.limits import DEFAULT_LIMITS, Limits
from pipeline.parameters import choice

__all__ = [
    "ROLES",
    "Retention",
    "parse_duration",
    "AnalystConfig",
    "CoordinatorConfig",
    "SiteConfig",
    "PrivacyPolicy",
    "SitePolicy",
    "check_name",
    "load_analyst_config",
    "load_coordinator_config",
    "load_site_config",
    "render_toml",
]

log = logging.getLogger(__name__)

ROLES = ("coordinator", "site", "analyst", "operator")
"""The roles a certificate can carry (its subject OU).

An ``operator`` runs the federation: it may read every job's status and results (an
analyst only their own) but submits nothing and takes part in no round."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ANALYSIS = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")

DEFAULT_PORT = 8443
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def check_name(name: str, *, what: str = "name") -> str:
    """Returns ``name`` if it is a valid federation, participant or analysis name.

    Names become certificate subjects, folder names and TOML keys, so they are kept to
    letters, digits, ``_`` and ``-`` (at most 64 characters, starting with a letter or
    digit).

    Raises:
        ConfigurationError: the name has other characters or is empty.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class PrivacyPolicy:
    """A site's ``[policy.privacy]``: its differential-privacy budget and the terms it accepts.

    The budget is the site's, over every job of every analyst together (one person's
    data at the site is in all of them): the zCDP of the noisy releases it contributed
    to adds up, and their sum converted at ``delta`` must stay within ``epsilon_budget``.

    Attributes:
        epsilon_budget: the most (epsilon, delta)-DP the site's releases may cost in
            all; ``None``: no budget (noisy releases are still recorded).
        delta: the delta the budget is kept at.
        max_colluding: sites the site assumes may share their noise with the
            coordinator: it declines a job whose privacy terms assume fewer, or count on
            more honest sites than ``threshold - max_colluding``.
        required: decline every job that would release its samples without
            differential privacy.
    """

    epsilon_budget: float | None = None
    delta: float = 1e-6
    max_colluding: int = 0
    required: bool = False


@dataclass(frozen=True)
class SitePolicy:
    """What a site agrees to contribute to (disclosure control in the spirit of DataSHIELD).

    Attributes:
        allowed_analyses: names of the analyses this site runs; any other job is refused.
        min_samples: k: the site refuses to contribute to any aggregate over fewer than
            k of its samples.
        min_allele_count: per-variant results are published only above this minor
            allele count.
        share_variant_keys: whether the site may reveal which variants it has (their
            IDs, never counts) where an analysis needs the union of the sites' variants
            (the census's first round); off unless the site opts in.
        share_site_metrics: whether the site may reveal its own held-out metrics of a
            trained model (the statistics behind AUC, accuracy, R², in its own slot of
            the final evaluation's secure sum); off unless the site opts in, and then
            they stay at the site.
        threshold_rule: the least Shamir threshold the site accepts, relative to the
            parties that hold shares of its secrets: ``two_thirds`` (t >= floor(2m/3) + 1,
            the default: the coordinator may deviate) or ``majority`` (t > m/2, a
            coordinator trusted to follow the protocol).
        min_sites, max_sites: the least and most sites a job may have for this site
            to take part.
        min_set_difference: two contributing sets of the site's samples are too close
            when they differ by 1 to ``min_set_difference - 1`` samples; the site declines
            a job whose set is too close to one it already contributed to a release.
        max_round_reruns: how many more attempts at a secure-sum round of one job the
            site takes part in after an attempt was aborted (each draws fresh keys and
            SecAgg+ graph, so this bounds a coordinator aborting to redraw); a round the
            site completed is never run again.
    """

    allowed_analyses: tuple[str, ...]
    min_samples: int = 10
    min_allele_count: int = 5
    share_variant_keys: bool = False
    share_site_metrics: bool = False
    threshold_rule: str = "two_thirds"
    min_sites: int = 2
    max_sites: int = 1000
    max_round_reruns: int = 0
    min_set_difference: int = 5
    privacy: PrivacyPolicy = PrivacyPolicy()

    def allows(self, analysis: str) -> bool:
        """Whether jobs of ``analysis`` may use this site's data."""
        return analysis in self.allowed_analyses


@dataclass(frozen=True)
class SiteConfig:
    """A site's ``site.toml``: its identity, its coordinator, its data and its policy.

    ``roster`` is the federation roster signed by the CA
    (:mod:`pipeline.federation.roster`): the agent starts only if ``cert`` is the
    certificate it lists under ``name``. ``sample_lists`` maps the names jobs may give
    (``keep``/``remove``) to the site's own files of IIDs.
    """

    path: Path
    name: str
    federation: str
    coordinator_url: str
    cert: Path
    key: Path
    ca: Path
    roster: Path
    dataset: Path
    policy: SitePolicy
    audit_log: Path
    state_dir: Path
    poll_interval: float
    sample_lists: Mapping[str, Path] = field(default_factory=dict, hash=False)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")


def parse_duration(value: str | float | int, *, what: str = "duration") -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number: the retention policy's ages.

    One parser for ``genofed coordinator prune --older-than`` and ``[retention]`` in ``coordinator.toml``.

    Raises:
        ConfigurationError: anything else (says the accepted forms).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigurationError(f"{what} {value!r}: expected a number of seconds >= 0")
        return float(value)
    match = _DURATION.fullmatch(str(value))
    if match is None:
        raise ConfigurationError(f"{what} {value!r}: expected a number and a unit, e.g. 30d, 12h, 90m, 45s or 2w")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]


@dataclass(frozen=True)
class Retention:
    """The ``[retention]`` table: the running coordinator prunes ended jobs on its own.

    Attributes:
        older_than: seconds since a job ended before its contributions and results go
            (as ``genofed coordinator prune --older-than``).
        every: seconds between two applications of the policy (the first runs at start).
    """

    older_than: float
    every: float = 3600.0


@dataclass(frozen=True)
class CoordinatorConfig:
    """The coordinator's ``coordinator.toml``: where it listens and who is enrolled.

    ``fingerprints`` optionally pins each enrolled participant to one certificate
    (SHA-256 of its DER): a participant whose certificate was re-issued is then refused
    until the pin is updated. Empty means certificates are not pinned (any unexpired
    certificate from the federation CA with an enrolled name and role is accepted).
    ``roster`` is the federation roster signed by the CA; every enrolled participant
    must be in it. ``[enrolment] operators`` may read every job (analysts only their
    own). The optional ``[limits]`` table bounds requests and body bytes in flight, per
    participant and in all (:class:`~pipeline.federation.limits.Limits`; defaults 256
    requests, 8 per participant, 1 GiB and 128 MiB of bodies): beyond them the answer
    is 429, so the coordinator's memory for bodies never exceeds ``max_bytes_in_flight``.
    The optional ``[retention]`` table (:class:`Retention`) has the running coordinator
    prune ended jobs periodically; without it only ``genofed coordinator prune`` does.
    """

    path: Path
    federation: str
    host: str
    port: int
    cert: Path
    key: Path
    ca: Path
    roster: Path
    database: Path
    audit_log: Path
    sites: tuple[str, ...]
    analysts: tuple[str, ...]
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    fingerprints: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    operators: tuple[str, ...] = ()
    limits: Limits = DEFAULT_LIMITS
    retention: Retention | None = None

    @property
    def url(self) -> str:
        """The URL clients use, ``https://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def role_of(self, name: str) -> str | None:
        """The enrolled role of participant ``name`` (``site``/``analyst``/``operator``), or ``None``."""
        if name in self.sites:
            return "site"
        if name in self.analysts:
            return "analyst"
        if name in self.operators:
            return "operator"
        return None

    def enrolled(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(role, names)`` for every role a participant can be enrolled with."""
        return (("site", self.sites), ("analyst", self.analysts), ("operator", self.operators))


@dataclass(frozen=True)
class AnalystConfig:
    """An analyst's ``analyst.toml`` (or an operator's ``operator.toml``): identity and the coordinator.

    ``role`` is the table the file holds, ``analyst`` or ``operator``; the coordinator
    checks it against the certificate, so the file only chooses what the client expects.
    """

    path: Path
    name: str
    federation: str
    coordinator_url: str
    cert: Path
    key: Path
    ca: Path
    role: str = "analyst"


# --------------------------------------------------------------------------- reading


class _Table:
    """One TOML table being validated: every read is checked and every key accounted for."""

    def __init__(self, path: Path, data: Mapping[str, Any], prefix: str) -> None:
        self.path = path
        self.data = data
        self.prefix = prefix
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, expected: str, value: Any = None, *, missing: bool = False) -> ConfigurationError:
        where = f"{self.path}: key '{self._key(key)}'"
        if missing:
            return ConfigurationError(f"{where} is missing; expected {expected}")
        return ConfigurationError(f"{where}: expected {expected}, got {value!r}")

    def get(self, key: str, check: Callable[[Any], Any], expected: str, default: Any = ...) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(key, expected, missing=True)
            value = default
        else:
            value = self.data[key]
        try:
            return check(value)
        except (TypeError, ValueError, ConfigurationError):
            raise self.fail(key, expected, value) from None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise ConfigurationError(
                f"{self.path}: unknown key '{self._key(unknown[0])}'; expected only: {allowed} (check the spelling)"
            )


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError
    return value


def _name(value: Any) -> str:
    return check_name(_str(value))


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError
        if maximum is not None and value > maximum:
            raise ValueError
        return value

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError
    return float(value)


def _names(pattern: re.Pattern[str]) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and pattern.fullmatch(v) for v in value):
            raise TypeError
        if len(set(value)) != len(value):
            raise ValueError
        return tuple(value)

    return check


def _fingerprint(value: Any) -> str:
    if not _FINGERPRINT.fullmatch(_str(value)):
        raise ValueError
    return value


def _url(value: Any) -> str:
    parts = urlsplit(_str(value))
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError
    parts.port  # noqa: B018 -- raises ValueError on a malformed port
    return value.rstrip("/")


def _path(base: Path) -> Callable[[Any], Path]:
    def check(value: Any) -> Path:
        path = Path(os.path.expanduser(_str(value)))
        return path if path.is_absolute() else (base / path)

    return check


def _read(path: Path | str) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such configuration file (genofed provision writes one per participant)") from None
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path}: not valid TOML: {error}") from None
    return path, data


def _tables(path: Path, data: Mapping[str, Any], required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, _Table]:
    tables: dict[str, _Table] = {}
    for name in (*required, *optional):
        if name not in data:
            if name in required:
                raise ConfigurationError(f"{path}: table [{name}] is missing")
            tables[name] = _Table(path, {}, name)
            continue
        if not isinstance(data[name], dict):
            raise ConfigurationError(f"{path}: key '{name}' must be a table [{name}], got {data[name]!r}")
        tables[name] = _Table(path, data[name], name)
    unknown = sorted(set(data) - set(tables))
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown key '{unknown[0]}'; expected only the tables {', '.join(f'[{n}]' for n in tables)}"
        )
    return tables


def _tls(table: _Table, base: Path, *, check_files: bool) -> tuple[Path, Path, Path]:
    """The ``[tls]`` certificate, key and CA paths (the caller finishes the table)."""
    paths = []
    for key, what in (("cert", "certificate"), ("key", "private key"), ("ca", "federation CA certificate")):
        path = table.get(key, _path(base), f"the path of the participant's {what} (PEM)")
        if check_files and not path.is_file():
            raise ConfigurationError(
                f"{table.path}: key 'tls.{key}': {path} does not exist; expected the {what} written by genofed provision"
            )
        paths.append(path)
    if check_files:
        mode = paths[1].stat().st_mode & 0o077
        if mode:
            log.warning("%s: private key %s is readable by other users; run: chmod 600 %s", table.path, paths[1], paths[1])
    return paths[0], paths[1], paths[2]


def _roster(table: _Table, base: Path, *, check_files: bool) -> Path:
    """The ``[tls] roster`` path: required, with a message that says how to get one."""
    how = (
        "re-run genofed provision, or copy the federation's roster.json (in the operator's provision output and "
        "in every participant folder) into this folder"
    )
    if "roster" not in table.data:
        raise ConfigurationError(
            f"{table.path}: key 'tls.roster' is missing; expected the path of the federation roster signed by the CA "
            f"(this file predates it): {how}, and add roster = \"roster.json\" to [tls]"
        )
    path: Path = table.get("roster", _path(base), "the path of the federation roster (roster.json), signed by the CA")
    if check_files and not path.is_file():
        raise ConfigurationError(
            f"{table.path}: key 'tls.roster': {path} does not exist; expected the federation roster written by "
            f"genofed provision: {how}"
        )
    return path


def _env_url(env: Mapping[str, str], url: str, path: Path) -> str:
    override = env.get("GENOFED_COORDINATOR_URL")
    if not override:
        return url
    try:
        return _url(override)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"GENOFED_COORDINATOR_URL={override!r} (overriding {path}): expected https://HOST:PORT"
        ) from None


def load_site_config(
    path: Path | str, *, check_files: bool = True, env: Mapping[str, str] | None = None
) -> SiteConfig:
    """Reads and validates a site's ``site.toml``.

    Args:
        path: the file; relative paths inside it are resolved against its folder.
        check_files: require the certificate, key, CA and roster files to exist (the
            dataset is checked when a job opens it; the roster's signature when the
            agent starts).
        env: environment for ``GENOFED_COORDINATOR_URL`` (default ``os.environ``).

    Raises:
        ConfigurationError: naming the file and the key that is missing or wrong.
    """
    path, data = _read(path)
    env = os.environ if env is None else env
    base = path.parent.resolve()
    tables = _tables(path, data, ("site", "tls", "policy"), ("sample_lists",))
    site = tables["site"]
    name = site.get("name", _name, "the site's name (letters, digits, '_', '-'), as in its certificate")
    federation = site.get("federation", _name, "the federation's name, as in the CA certificate")
    url = site.get("coordinator_url", _url, "the coordinator's URL, https://HOST:PORT")
    dataset = site.get("dataset", _path(base), "the path of the site's harmonized dataset (genofed ingest --out)")
    audit_log = site.get("audit_log", _path(base), "the path of the site's audit log", "audit.log")
    state_dir = site.get("state_dir", _path(base), "a folder for the agent's state", "state")
    poll_interval = site.get("poll_interval", _positive_float, "a number of seconds > 0", 2.0)
    site.finish()
    cert, key, ca = _tls(tables["tls"], base, check_files=check_files)
    roster = _roster(tables["tls"], base, check_files=check_files)
    tables["tls"].finish()
    table = tables["policy"]
    policy = SitePolicy(
        allowed_analyses=table.get(
            "allowed_analyses", _names(_ANALYSIS), "a list of distinct analysis names, e.g. [\"census\"]"
        ),
        min_samples=table.get("min_samples", _int(1), "an integer >= 1 (k: no aggregate over fewer samples)", 10),
        min_allele_count=table.get("min_allele_count", _int(0), "an integer >= 0", 5),
        share_variant_keys=table.get("share_variant_keys", _bool, "true or false", False),
        share_site_metrics=table.get("share_site_metrics", _bool, "true or false", False),
        threshold_rule=table.get("threshold_rule", choice(*THRESHOLD_RULES), f"one of {', '.join(THRESHOLD_RULES)}", "two_thirds"),
        min_sites=table.get("min_sites", _int(2), "an integer >= 2", 2),
        max_sites=table.get("max_sites", _int(2), "an integer >= 2", 1000),
        max_round_reruns=table.get("max_round_reruns", _int(0), "an integer >= 0", 0),
        min_set_difference=table.get("min_set_difference", _int(1), "an integer >= 1 (1: no set-difference rule)", 5),
        privacy=_privacy_policy(table, path),
    )
    table.finish()
    if policy.max_sites < policy.min_sites:
        raise ConfigurationError(f"{path}: [policy] max_sites = {policy.max_sites} is below min_sites = {policy.min_sites}")
    return SiteConfig(
        path=path, name=name, federation=federation, coordinator_url=_env_url(env, url, path), cert=cert, key=key,
        ca=ca, roster=roster, dataset=dataset, policy=policy, audit_log=audit_log, state_dir=state_dir, poll_interval=poll_interval,
        sample_lists=_sample_lists(tables["sample_lists"], base, check_files=check_files),
    )


def _sample_lists(table: _Table, base: Path, *, check_files: bool) -> dict[str, Path]:
    """The optional ``[sample_lists]``: list name -> file of IIDs (relative to the config's folder)."""
    lists = {}
    for name in table.data:
        path: Path = table.get(name, _path(base), "the path of a file of sample IDs (one per line, or FID IID)")
        if check_files and not path.is_file():
            raise ConfigurationError(f"{table.path}: key 'sample_lists.{name}': {path} does not exist; expected a file of "
                                     "sample IDs")
        lists[name] = path
    table.finish()
    return lists


def _privacy_policy(policy: _Table, path: Path) -> PrivacyPolicy:
    """The optional ``[policy.privacy]`` table inside ``[policy]``."""
    data = policy.get("privacy", lambda value: value if isinstance(value, dict) else _fail(), "a table [policy.privacy]", {})
    table = _Table(path, data, "policy.privacy")
    privacy = PrivacyPolicy(
        epsilon_budget=table.get("epsilon_budget", _optional_positive, "a number > 0 (the site's total epsilon)", None),
        delta=table.get("delta", _open_unit(0.01), "a number in (0, 0.01]", 1e-6),
        max_colluding=table.get("max_colluding", _int(0), "an integer >= 0", 0),
        required=table.get("required", _bool, "true or false", False),
    )
    table.finish()
    return privacy


def _fail() -> Any:
    raise ValueError


def _optional_positive(value: Any) -> float | None:
    if value is None:
        return None
    return _positive_float(value)


def _open_unit(high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
            raise ValueError
        return float(value)

    return check


def load_analyst_config(
    path: Path | str, *, check_files: bool = True, env: Mapping[str, str] | None = None
) -> AnalystConfig:
    """Reads and validates an analyst's ``analyst.toml`` or an operator's ``operator.toml``.

    The file holds either an ``[analyst]`` or an ``[operator]`` table (the same keys),
    and ``[tls]`` (see :func:`load_site_config`).
    """
    path, data = _read(path)
    env = os.environ if env is None else env
    base = path.parent.resolve()
    role = "operator" if "operator" in data and "analyst" not in data else "analyst"
    tables = _tables(path, data, (role, "tls"))
    client = tables[role]
    name = client.get("name", _name, f"the {role}'s name, as in the certificate")
    federation = client.get("federation", _name, "the federation's name, as in the CA certificate")
    url = client.get("coordinator_url", _url, "the coordinator's URL, https://HOST:PORT")
    client.finish()
    cert, key, ca = _tls(tables["tls"], base, check_files=check_files)
    tables["tls"].finish()
    return AnalystConfig(
        path=path, name=name, federation=federation, coordinator_url=_env_url(env, url, path), cert=cert, key=key, ca=ca,
        role=role,
    )


def load_coordinator_config(
    path: Path | str, *, check_files: bool = True, env: Mapping[str, str] | None = None
) -> CoordinatorConfig:
    """Reads and validates the coordinator's ``coordinator.toml``.

    ``GENOFED_COORDINATOR_HOST`` and ``GENOFED_COORDINATOR_PORT`` override the address
    it binds (the certificate still names the provisioned host).

    Raises:
        ConfigurationError: naming the file and the key that is missing or wrong.
    """
    path, data = _read(path)
    env = os.environ if env is None else env
    base = path.parent.resolve()
    tables = _tables(path, data, ("coordinator", "tls", "enrolment"), ("fingerprints", "limits", "retention"))
    coordinator = tables["coordinator"]
    federation = coordinator.get("federation", _name, "the federation's name, as in the CA certificate")
    host = coordinator.get("host", _str, "the address to listen on, e.g. \"127.0.0.1\"")
    port = coordinator.get("port", _int(1, 65535), "a TCP port 1-65535", DEFAULT_PORT)
    database = coordinator.get("database", _path(base), "the path of the coordinator's database", "coordinator.db")
    audit_log = coordinator.get("audit_log", _path(base), "the path of the coordinator's audit log", "audit.log")
    max_message_bytes = coordinator.get(
        "max_message_bytes", _int(1024), "an integer >= 1024 (bytes)", DEFAULT_MAX_MESSAGE_BYTES
    )
    coordinator.finish()
    cert, key, ca = _tls(tables["tls"], base, check_files=check_files)
    roster = _roster(tables["tls"], base, check_files=check_files)
    tables["tls"].finish()
    enrolment = tables["enrolment"]
    sites = enrolment.get("sites", _names(_NAME), "a list of distinct site names")
    analysts = enrolment.get("analysts", _names(_NAME), "a list of distinct analyst names", [])
    operators = enrolment.get("operators", _names(_NAME), "a list of distinct operator names", [])
    enrolment.finish()
    for listed_as, names, earlier in (("analysts", analysts, (("site", sites),)),
                                      ("operators", operators, (("site", sites), ("analyst", analysts)))):
        for other_role, other in earlier:
            both = sorted(set(names) & set(other))
            if both:
                raise ConfigurationError(
                    f"{path}: key 'enrolment.{listed_as}': {both[0]!r} is also enrolled as a {other_role}; a name has one role"
                )
    pins = tables["fingerprints"]
    fingerprints: dict[str, str] = {}
    for participant in list(pins.data):
        if participant not in (*sites, *analysts, *operators):
            raise ConfigurationError(
                f"{path}: key 'fingerprints.{participant}': not an enrolled site, analyst or operator; remove it or enrol it"
            )
        fingerprints[participant] = pins.get(
            participant, _fingerprint, "a SHA-256 certificate fingerprint (64 lowercase hex digits)",
        )
    pins.finish()
    limits = _limits(tables["limits"], path)
    retention = _retention(tables["retention"]) if "retention" in data else None
    if env.get("GENOFED_COORDINATOR_HOST"):
        host = env["GENOFED_COORDINATOR_HOST"]
    if env.get("GENOFED_COORDINATOR_PORT"):
        value = env["GENOFED_COORDINATOR_PORT"]
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            raise ConfigurationError(f"GENOFED_COORDINATOR_PORT={value!r} (overriding {path}): expected a TCP port 1-65535")
        port = int(value)
    return CoordinatorConfig(
        path=path, federation=federation, host=host, port=port, cert=cert, key=key, ca=ca, roster=roster, database=database,
        audit_log=audit_log, sites=sites, analysts=analysts, max_message_bytes=max_message_bytes,
        fingerprints=MappingProxyType(fingerprints), operators=operators, limits=limits, retention=retention,
    )


def _retention(table: _Table) -> Retention:
    """The ``[retention]`` table: ``older_than`` (required) and ``every``, as ages like ``30d`` or seconds."""
    age = "an age such as \"30d\", \"12h\", \"90m\" or a number of seconds"
    older_than = table.get("older_than", parse_duration, age)
    every = table.get("every", parse_duration, age + " (> 0)", 3600.0)
    table.finish()
    if every <= 0:
        raise table.fail("every", age + " (> 0)", every)
    return Retention(older_than=older_than, every=every)


def _limits(table: _Table, path: Path) -> Limits:
    """The ``[limits]`` table: every key optional, defaults in :class:`~pipeline.federation.limits.Limits`."""
    values = {
        name: table.get(name, _int(1), "a positive integer", getattr(DEFAULT_LIMITS, name))
        for name in ("max_concurrent_requests", "max_requests_per_participant", "max_bytes_in_flight",
                     "max_bytes_in_flight_per_participant")
    }
    table.finish()
    try:
        return Limits(**values)
    except ConfigurationError as error:
        raise ConfigurationError(f"{path}: {error}") from None


# --------------------------------------------------------------------------- writing

TomlValue = str | int | float | bool | Sequence[str | int | float | bool]


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigurationError(f"cannot write {type(value).__name__} to TOML")


def render_toml(
    tables: Mapping[str, Mapping[str, TomlValue]],
    *,
    header: str = "",
    comments: Mapping[str, str] | None = None,
) -> str:
    """Renders flat tables as TOML, with an optional header and per-key comments.

    Args:
        tables: ``{table: {key: value}}``; values are strings, numbers, booleans or
            lists of them.
        header: comment lines written at the top.
        comments: ``{"table.key": "comment"}`` written above a key, or
            ``{"table": "comment"}`` above a table header.
    """
    comments = comments or {}
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for table, values in tables.items():
        if lines:
            lines.append("")
        if not _NAME.fullmatch(table):
            raise ConfigurationError(f"cannot write table name {table!r} to TOML")
        if table in comments:
            lines.extend(f"# {line}".rstrip() for line in comments[table].splitlines())
        lines.append(f"[{table}]")
        for key, value in values.items():
            if f"{table}.{key}" in comments:
                lines.extend(f"# {line}".rstrip() for line in comments[f"{table}.{key}"].splitlines())
            name = key if _NAME.fullmatch(key) else _toml_value(key)
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
