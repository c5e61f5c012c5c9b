"""Fixtures for workflow tests: a small simulated cohort, site configs, and a real one-node Slurm.

The Slurm fixture starts ``munged``, ``slurmctld`` and ``slurmd`` (Debian ``slurm-wlm``
and ``munge``) from a minimal ``slurm.conf`` in a temporary folder, on 127.0.0.1 with
their own ports, key and socket, and stops them afterwards. Tests that use it skip,
saying why, when the daemons are not installed or do not come up. To run them by hand
on Debian/Ubuntu (as root)::

    apt-get install -y slurm-wlm munge
    python -m pytest tests/workflow -m slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SITE_TOML = """\
[site]
name = "{name}"
federation = "demo"
coordinator_url = "https://127.0.0.1:8443"
dataset = "dataset"

[tls]
cert = "cert.pem"
key = "key.pem"
ca = "ca.pem"
roster = "roster.json"

[policy]
allowed_analyses = ["census", "gwas"]
"""


@pytest.fixture(scope="session")
def wf_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-site simulated cohort (40 samples per site, 600 kb of chr22): seconds to make."""
    from pipeline.sim.cohort import simulate_cohort

    out = tmp_path_factory.mktemp("wf-cohort") / "cohort"
    simulate_cohort(out, sites=2, samples=40, region="chr22:16000000-16600000", seed=3)
    return out


def make_site(folder: Path, name: str = "site-1") -> Path:
    """Writes a site.toml (no certificates needed to prepare data) and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.toml"
    path.write_text(SITE_TOML.format(name=name))
    return path


def site_params(cohort: Path, site: str = "site-1", **extra: object) -> dict[str, object]:
    """Parameters of workflows/site-prep.yaml for one simulated site (copied inputs: tests edit them)."""
    return {
        "vcf": str(cohort / site / "genotypes.vcf.gz"),
        "fasta": str(cohort / "reference.fa.gz"),
        "phenotypes": str(cohort / site / "phenotypes.tsv"),
        "chunk_size": "200kb",
        **extra,
    }


@dataclass(frozen=True)
class SlurmCluster:
    """A running one-node Slurm: commands need ``SLURM_CONF`` set (``env``)."""

    conf: Path
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}


def _slurm_conf(root: Path, memory_mb: int) -> str:
    return textwrap.dedent(
        f"""\
        ClusterName=genofedtest
        SlurmctldHost=localhost(127.0.0.1)
        SlurmUser=root
        SlurmdUser=root
        AuthType=auth/munge
        CredType=cred/munge
        AuthInfo=socket={root}/munge/munge.sock
        MpiDefault=none
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        SchedulerType=sched/backfill
        StateSaveLocation={root}/state
        SlurmdSpoolDir={root}/spool
        SlurmctldPidFile={root}/slurmctld.pid
        SlurmdPidFile={root}/slurmd.pid
        SlurmctldPort={_port()}
        SlurmdPort={_port()}
        SlurmctldLogFile={root}/log/slurmctld.log
        SlurmdLogFile={root}/log/slurmd.log
        ReturnToService=2
        MinJobAge=600
        NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory_mb} State=UNKNOWN
        PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
        """
    )


def _port() -> int:
    from pipeline.federation.localhost import free_port

    return free_port()


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Starts munged + slurmctld + slurmd on 127.0.0.1; skips with the reason when it cannot."""
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the Slurm fixture runs slurmd as root (SlurmdUser=root); run the slurm tests as root")
    root = Path("/tmp") / f"genofed-slurm-{os.getpid()}"  # short: unix socket paths are limited to 108 bytes
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("state", "spool", "log", "munge"):
        (root / folder).mkdir(parents=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, memory_mb=4000))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: list[subprocess.Popen[bytes]] = []
    log = (root / "log" / "daemons.out").open("wb")
    try:
        processes.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--socket={root}/munge/munge.sock", f"--key-file={key}", f"--log-file={root}/log/munged.log",
             f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/seed"], stdout=log, stderr=log,
        ))
        deadline = time.monotonic() + 10
        while not (root / "munge" / "munge.sock").exists():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                pytest.skip(f"munged did not start: {(root / 'log' / 'daemons.out').read_text()[-500:]}")
            time.sleep(0.1)
        processes.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=log, stderr=log))
        processes.append(subprocess.Popen(["slurmd", "-D", "-N", "localhost"], env=env, stdout=log, stderr=log))
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = done.stdout.strip()
            if state == "idle":
                break
            if any(p.poll() is not None for p in processes):
                break
            time.sleep(0.5)
        else:
            state = f"timeout (last state {state!r})"
        if state != "idle":
            _stop(processes)
            tail = (root / "log" / "daemons.out").read_text()[-1500:]
            pytest.skip(f"Slurm did not come up ({state}): {tail}")
        yield SlurmCluster(conf=conf, root=root)
    finally:
        _stop(processes)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_for_jobs(cluster: SlurmCluster, job_ids: list[str], timeout: float = 240) -> None:
    """Waits until no job of ``job_ids`` (or of its array) is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], env=cluster.env, capture_output=True, text=True)
        if done.returncode == 0 and not done.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"Slurm jobs {job_ids} still queued after {timeout} s")
