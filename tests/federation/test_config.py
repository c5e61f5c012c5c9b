"""Config loaders: every key validated, errors name file and key, paths resolved, env overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigurationError
from pipeline.federation.config import (
    SitePolicy,
    load_analyst_config,
    load_coordinator_config,
    load_site_config,
    render_toml,
)

SITES_DIR = Path(__file__).resolve().parents[2] / "sites"

SITE = """
[site]
name = "site-1"
federation = "demo"
coordinator_url = "https://127.0.0.1:8443"
dataset = "data/site-1.dataset"

[tls]
cert = "cert.pem"
key = "key.pem"
ca = "/etc/genofed/ca.pem"
roster = "roster.json"

[policy]
allowed_analyses = ["census"]
"""

COORDINATOR = """
[coordinator]
federation = "demo"
host = "127.0.0.1"
port = 9443

[tls]
cert = "cert.pem"
key = "key.pem"
ca = "ca.pem"
roster = "roster.json"

[enrolment]
sites = ["site-1", "site-2"]
analysts = ["alice"]
"""

ANALYST = """
[analyst]
name = "alice"
federation = "demo"
coordinator_url = "https://localhost:8443/"

[tls]
cert = "cert.pem"
key = "key.pem"
ca = "ca.pem"
"""


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize("name", ["template", "site-1", "site-2", "site-3"])
def test_shipped_site_configs__load(name):
    config = load_site_config(SITES_DIR / name / "site.toml", check_files=False, env={})
    assert config.federation == "demo"
    assert config.coordinator_url == "https://127.0.0.1:8443"
    assert config.cert == SITES_DIR.resolve() / name / "cert.pem"
    assert config.roster == SITES_DIR.resolve() / name / "roster.json"
    assert config.policy.allowed_analyses
    if name != "template":
        assert config.name == name
    assert config.policy.share_variant_keys == (name in ("site-1", "site-2"))
    assert config.policy.share_site_metrics is False


def test_shipped_site_configs__template_comments_every_key():
    text = (SITES_DIR / "template" / "site.toml").read_text()
    data = tomllib.loads(text)
    lines = text.splitlines()
    tables = list(data.items())
    while tables:
        table, values = tables.pop()
        for key, value in values.items():
            if isinstance(value, dict):  # a table inside a table: [table.key], commented too
                index = lines.index(f"[{table}.{key}]")
                tables.append((f"{table}.{key}", value))
            else:
                index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
            assert lines[index - 1].startswith("#"), f"{table}.{key} has no comment"


def test_site_config__defaults_and_paths(tmp_path):
    config = load_site_config(write(tmp_path, SITE), check_files=False, env={})
    base = tmp_path.resolve()
    assert config.dataset == base / "data" / "site-1.dataset"
    assert config.cert == base / "cert.pem" and config.ca == Path("/etc/genofed/ca.pem")
    assert config.roster == base / "roster.json"
    assert config.audit_log == base / "audit.log" and config.state_dir == base / "state"
    assert config.poll_interval == 2.0
    assert config.policy == SitePolicy(allowed_analyses=("census",), min_samples=10, min_allele_count=5,
                                       share_variant_keys=False, share_site_metrics=False)
    assert config.policy.allows("census") and not config.policy.allows("gwas")


def test_site_config__sample_lists_name_the_sites_own_files(tmp_path):
    assert load_site_config(write(tmp_path, SITE), check_files=False, env={}).sample_lists == {}
    text = SITE + '\n[sample_lists]\nunrelated_eur = "lists/eur.txt"\nwithdrawn = "/srv/withdrawn.txt"\n'
    config = load_site_config(write(tmp_path, text), check_files=False, env={})
    assert config.sample_lists == {"unrelated_eur": tmp_path.resolve() / "lists" / "eur.txt",
                                   "withdrawn": Path("/srv/withdrawn.txt")}
    with pytest.raises(ConfigurationError, match=r"key 'sample_lists.withdrawn': expected the path of a file of sample IDs"):
        load_site_config(write(tmp_path, SITE + "\n[sample_lists]\nwithdrawn = 3\n"), check_files=False, env={})
    for name in ("cert.pem", "key.pem", "roster.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "key.pem").chmod(0o600)
    text = text.replace("/etc/genofed/ca.pem", "cert.pem")
    with pytest.raises(ConfigurationError, match=r"'sample_lists.unrelated_eur': .*eur.txt does not exist"):
        load_site_config(write(tmp_path, text), check_files=True, env={})


def test_site_config__share_site_metrics_opt_in(tmp_path):
    text = replace_line(SITE, 'allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nshare_site_metrics = true')
    policy = load_site_config(write(tmp_path, text), check_files=False, env={}).policy
    assert policy.share_site_metrics is True and policy.share_variant_keys is False


def test_site_config__max_round_reruns(tmp_path):
    assert load_site_config(write(tmp_path, SITE), check_files=False, env={}).policy.max_round_reruns == 0
    text = replace_line(SITE, 'allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nmax_round_reruns = 2')
    assert load_site_config(write(tmp_path, text), check_files=False, env={}).policy.max_round_reruns == 2


def test_site_config__relative_to_file_not_cwd(tmp_path, monkeypatch):
    path = write(tmp_path, SITE)
    monkeypatch.chdir("/")
    assert load_site_config(path, check_files=False, env={}).cert == tmp_path.resolve() / "cert.pem"


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ('name = "site-1"\n', "", "site.name", "is missing"),
        ('name = "site-1"', 'name = "site 1"', "site.name", "letters, digits"),
        ('name = "site-1"', "name = 1", "site.name", "letters, digits"),
        ('coordinator_url = "https://127.0.0.1:8443"', 'coordinator_url = "http://127.0.0.1:8443"', "site.coordinator_url", "https://"),
        ('coordinator_url = "https://127.0.0.1:8443"', 'coordinator_url = "https://h:99999"', "site.coordinator_url", "https://"),
        ('dataset = "data/site-1.dataset"', 'dataset = ""', "site.dataset", "dataset"),
        ('dataset = "data/site-1.dataset"', 'dataset = "d"\npoll_interval = 0', "site.poll_interval", "> 0"),
        ('dataset = "data/site-1.dataset"', 'dataset = "d"\npoll_interval = "fast"', "site.poll_interval", "> 0"),
        ('dataset = "data/site-1.dataset"', 'dataset = "d"\ndatset = "d"', "site.datset", "unknown key"),
        ('cert = "cert.pem"\n', "", "tls.cert", "is missing"),
        ('key = "key.pem"', 'key = ["key.pem"]', "tls.key", "private key"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = "census"', "policy.allowed_analyses", "list"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census", "census"]', "policy.allowed_analyses", "distinct"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nmin_samples = 0', "policy.min_samples", ">= 1"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nmin_samples = 2.5', "policy.min_samples", ">= 1"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nmin_samples = true', "policy.min_samples", ">= 1"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nmin_allele_count = -1', "policy.min_allele_count", ">= 0"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nk = 5', "policy.k", "unknown key"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nshare_variant_keys = 1', "policy.share_variant_keys", "true or false"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nshare_site_metrics = "yes"', "policy.share_site_metrics", "true or false"),
        ('allowed_analyses = ["census"]', 'allowed_analyses = ["census"]\nmax_round_reruns = -1', "policy.max_round_reruns", ">= 0"),
    ],
)
def test_site_config__errors_name_file_and_key(tmp_path, old, new, key, expected):
    path = write(tmp_path, replace_line(SITE, old, new))
    with pytest.raises(ConfigurationError) as error:
        load_site_config(path, check_files=False, env={})
    message = str(error.value)
    assert str(path) in message and f"'{key}'" in message and expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SITE.replace("[policy]", "[polcy]"), "[policy] is missing"),
        (SITE + "\n[extra]\nx = 1\n", "unknown key 'extra'"),
        ('tls = "x"\n' + SITE.replace('[tls]\ncert = "cert.pem"\nkey = "key.pem"\nca = "/etc/genofed/ca.pem"\nroster = "roster.json"\n', ""),
         "must be a table"),
        ("[site\n", "not valid TOML"),
    ],
)
def test_site_config__table_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=str(path)) as error:
        load_site_config(path, check_files=False, env={})
    assert expected in str(error.value)


def test_site_config__missing_file(tmp_path):
    with pytest.raises(ConfigurationError, match="no such configuration file"):
        load_site_config(tmp_path / "site.toml")


def test_site_config__check_files(tmp_path):
    path = write(tmp_path, SITE.replace("/etc/genofed/ca.pem", "ca.pem"))
    with pytest.raises(ConfigurationError, match="'tls.cert'.*does not exist"):
        load_site_config(path, env={})
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "key.pem").chmod(0o600)
    with pytest.raises(ConfigurationError, match="'tls.roster'.*does not exist.*copy the federation's roster.json"):
        load_site_config(path, env={})
    (tmp_path / "roster.json").write_text("{}")
    assert load_site_config(path, env={}).key == tmp_path.resolve() / "key.pem"


@pytest.mark.parametrize(("text", "name"), [(SITE, "site.toml"), (COORDINATOR, "coordinator.toml")])
def test_config__without_roster_says_how_to_get_one(tmp_path, text, name):
    path = write(tmp_path, replace_line(text, 'roster = "roster.json"\n', ""), name)
    load = load_site_config if name == "site.toml" else load_coordinator_config
    with pytest.raises(ConfigurationError) as error:
        load(path, check_files=False, env={})
    message = str(error.value)
    assert str(path) in message and "'tls.roster' is missing" in message
    assert "re-run genofed provision" in message and "copy the federation's roster.json" in message


def test_site_config__env_overrides_url_only(tmp_path):
    path = write(tmp_path, SITE)
    env = {"GENOFED_COORDINATOR_URL": "https://10.1.2.3:9000", "GENOFED_COORDINATOR_PORT": "1"}
    config = load_site_config(path, check_files=False, env=env)
    assert config.coordinator_url == "https://10.1.2.3:9000" and config.name == "site-1"
    with pytest.raises(ConfigurationError, match="GENOFED_COORDINATOR_URL"):
        load_site_config(path, check_files=False, env={"GENOFED_COORDINATOR_URL": "10.1.2.3:9000"})


def test_site_config__env_defaults_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOFED_COORDINATOR_URL", "https://coord.example.org:443")
    assert load_site_config(write(tmp_path, SITE), check_files=False).coordinator_url == "https://coord.example.org:443"


def test_coordinator_config__defaults(tmp_path):
    config = load_coordinator_config(write(tmp_path, COORDINATOR, "coordinator.toml"), check_files=False, env={})
    assert (config.federation, config.host, config.port) == ("demo", "127.0.0.1", 9443)
    assert config.url == "https://127.0.0.1:9443"
    assert config.database == tmp_path.resolve() / "coordinator.db"
    assert config.roster == tmp_path.resolve() / "roster.json"
    assert config.audit_log == tmp_path.resolve() / "audit.log"
    assert config.sites == ("site-1", "site-2") and config.analysts == ("alice",)
    assert config.max_message_bytes == 64 * 1024 * 1024 and dict(config.fingerprints) == {}
    assert config.role_of("site-2") == "site" and config.role_of("alice") == "analyst" and config.role_of("eve") is None


def test_coordinator_config__env_overrides_bind_address(tmp_path):
    path = write(tmp_path, COORDINATOR, "coordinator.toml")
    config = load_coordinator_config(path, check_files=False,
                                     env={"GENOFED_COORDINATOR_HOST": "0.0.0.0", "GENOFED_COORDINATOR_PORT": "8000"})
    assert (config.host, config.port) == ("0.0.0.0", 8000)
    with pytest.raises(ConfigurationError, match="GENOFED_COORDINATOR_PORT"):
        load_coordinator_config(path, check_files=False, env={"GENOFED_COORDINATOR_PORT": "http"})


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ('\n[fingerprints]\nsite-1 = "abc"\n', "fingerprints.site-1", "64 lowercase hex"),
        (f'\n[fingerprints]\neve = "{"0" * 64}"\n', "fingerprints.eve", "not an enrolled"),
    ],
)
def test_coordinator_config__fingerprint_errors(tmp_path, extra, key, expected):
    path = write(tmp_path, COORDINATOR + extra, "coordinator.toml")
    with pytest.raises(ConfigurationError, match=f"'{key}'") as error:
        load_coordinator_config(path, check_files=False, env={})
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port = 9443", "port = 70000", "coordinator.port"),
        ("port = 9443", 'port = "9443"', "coordinator.port"),
        ('analysts = ["alice"]', 'analysts = ["site-1"]', "enrolment.analysts"),
        ('sites = ["site-1", "site-2"]\n', "", "enrolment.sites"),
        ("port = 9443", "port = 9443\nmax_message_bytes = 10", "coordinator.max_message_bytes"),
    ],
)
def test_coordinator_config__errors(tmp_path, old, new, key):
    path = write(tmp_path, replace_line(COORDINATOR, old, new), "coordinator.toml")
    with pytest.raises(ConfigurationError, match=f"'{key}'"):
        load_coordinator_config(path, check_files=False, env={})


def test_analyst_config(tmp_path):
    config = load_analyst_config(write(tmp_path, ANALYST, "analyst.toml"), check_files=False, env={})
    assert config.name == "alice" and config.coordinator_url == "https://localhost:8443"
    with pytest.raises(ConfigurationError, match="'analyst.role'"):
        load_analyst_config(write(tmp_path, ANALYST.replace('name = "alice"', 'name = "alice"\nrole = "x"'), "a.toml"),
                            check_files=False, env={})


@pytest.mark.parametrize("value", ['quote " and \\ backslash', "tab\tnew\nline", "ünïcødé 🧬", "del\x7fchar", "\x00\x1f"])
def test_render_toml__strings_round_trip(value):
    text = render_toml({"t": {"k": value, "list": [value, "x"]}})
    assert tomllib.loads(text) == {"t": {"k": value, "list": [value, "x"]}}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.booleans(),
                  st.floats(allow_nan=False, allow_infinity=False), st.lists(st.text(max_size=5), max_size=3)),
        max_size=5,
    )
)
def test_render_toml__round_trips_tomllib(values):
    text = render_toml({"table": values}, header="header\nsecond line", comments={"table": "about the table"})
    assert tomllib.loads(text) == {"table": values}


def test_coordinator_config__operators_are_enrolled_with_their_own_role(tmp_path):
    text = COORDINATOR + 'operators = ["olga"]\n'
    config = load_coordinator_config(write(tmp_path, text, "coordinator.toml"), check_files=False, env={})
    assert config.operators == ("olga",) and config.role_of("olga") == "operator"
    assert dict(config.enrolled())["operator"] == ("olga",)
    for clash in ("site-1", "alice"):
        path = write(tmp_path, COORDINATOR + f'operators = ["{clash}"]\n', "coordinator.toml")
        with pytest.raises(ConfigurationError, match=r"'enrolment.operators'.*a name has one role"):
            load_coordinator_config(path, check_files=False, env={})


def test_operator_config__the_operator_table_reads_like_an_analysts(tmp_path):
    config = load_analyst_config(write(tmp_path, ANALYST.replace("[analyst]", "[operator]"), "operator.toml"), check_files=False, env={})
    assert (config.role, config.name) == ("operator", "alice")
    assert load_analyst_config(write(tmp_path, ANALYST, "analyst.toml"), check_files=False, env={}).role == "analyst"
    with pytest.raises(ConfigurationError, match="unknown key 'operator'"):
        load_analyst_config(write(tmp_path, ANALYST + "\n[operator]\nname = \"x\"\n", "both.toml"), check_files=False, env={})


def test_site_config__privacy_policy(tmp_path):
    text = SITE + "\n[policy.privacy]\nepsilon_budget = 4.0\ndelta = 1e-7\nmax_colluding = 1\nrequired = true\n"
    privacy = load_site_config(write(tmp_path, text), check_files=False, env={}).policy.privacy
    assert (privacy.epsilon_budget, privacy.delta, privacy.max_colluding, privacy.required) == (4.0, 1e-7, 1, True)
    default = load_site_config(write(tmp_path, SITE), check_files=False, env={}).policy.privacy
    assert default.epsilon_budget is None and not default.required
    for line, key in (("epsilon_budget = 0", "policy.privacy.epsilon_budget"), ("delta = 0.5", "policy.privacy.delta"),
                      ("budget = 3", "policy.privacy.budget")):
        with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")):
            load_site_config(write(tmp_path, SITE + f"\n[policy.privacy]\n{line}\n"), check_files=False, env={})
