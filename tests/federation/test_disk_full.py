"""A full coordinator disk: uploads are answered 507 and kept nowhere, and the job resumes once space is freed.

The store's writes fail with ENOSPC (a file) or SQLite's "database or disk is full"
while a flag is set, through the real server and agents on 127.0.0.1; the test frees
"space" once the coordinator has refused at least one upload, and the job then ends as
an undisturbed one would.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from typing import Any

import numpy as np
import pytest

from pipeline.federation import api
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta")


def test_disk_full__is_classified_for_files_and_sqlite():
    assert api.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert api.disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not api.disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not api.disk_full(ValueError("disk is full"))


@pytest.mark.parametrize("failure", ["file", "sqlite"])
def test_disk_full__uploads_get_507_and_the_job_resumes_once_space_is_freed(tmp_path, monkeypatch, failure):
    monkeypatch.setattr(api, "DISK_FULL_RETRY_SECONDS", 1)
    datasets = rs.small_datasets(tmp_path, SITES, num_variants=8, num_samples=10, seed=17)
    manifest = rs.provision_federation(tmp_path / "fed", datasets)
    full = threading.Event()
    full.set()
    refused: list[str] = []
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        store = server.coordinator.store
        original = store.stage_body if failure == "file" else store.add_message

        def failing(*args: Any, **kwargs: Any) -> Any:
            if full.is_set():
                refused.append(failure)
                if failure == "file":
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise sqlite3.OperationalError("database or disk is full")
            return original(*args, **kwargs)

        monkeypatch.setattr(store, "stage_body" if failure == "file" else "add_message", failing)
        analyst = rs.connection(manifest.analysts[0].folder, manifest.coordinator_url)
        spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(SITES), "stage_timeout": 600}
        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        with rs.agent_threads(manifest, max_idle=120):
            deadline = time.monotonic() + 60
            while not refused and time.monotonic() < deadline:
                time.sleep(0.02)
            assert refused, "no upload reached the full disk"
            status = analyst.get_json(f"/v1/jobs/{job_id}")
            while "notice" not in status and time.monotonic() < deadline:  # the refusal's answer is on its way
                status = analyst.get_json(f"/v1/jobs/{job_id}")
            assert status["status"] == "running"  # a full disk fails nothing...
            assert status["notice"].startswith("coordinator disk full")  # ...and the analyst is told why the job waits
            if failure == "file":  # what a site sees: 507, told when to come back
                with rs.connection(manifest.sites[1].folder, manifest.coordinator_url, max_attempts=1) as beta:
                    path = f"/v1/site/jobs/{job_id}/rounds/0/stages/{status['stage']}/messages/beta-probe-0001"
                    answer = beta.send("PUT", path, content=b"\0" * 64, headers={"content-type": "application/vnd.apache.arrow.stream"})
                assert answer.status_code in (507, 409), answer.text  # 409 if beta's own upload got in first
                if answer.status_code == 507:
                    assert answer.json()["error"] == "DiskFull" and answer.headers["retry-after"] == "1"
            full.clear()  # the operator frees space
            status = rs.wait_for_job(analyst, job_id, timeout=120)
        assert status["status"] == "done", status
        total = np.asarray(analyst.get_json(f"/v1/jobs/{job_id}/results")["summary"]["num_sites"])
        assert int(total) == len(SITES)
        analyst.close()


def test_disk_full__a_site_whose_state_directory_is_full_retries_and_the_job_resumes(tmp_path, monkeypatch):
    """The site's writes fail with ENOSPC: it declines nothing, says so, and its step succeeds once space is freed."""
    from pipeline.errors import DiskFull
    from pipeline.federation import agent as agent_module
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.config import SitePolicy
    from pipeline.federation.coordinator import Coordinator
    from pipeline.federation.store import Store

    names = ("alpha", "beta", "gamma")
    datasets = rs.small_datasets(tmp_path / "data", names, num_variants=8, num_samples=10, seed=17)
    configs = rs.in_process_site_configs(tmp_path, datasets, SitePolicy(allowed_analyses=("census",), min_samples=3,
                                                                          min_allele_count=0, share_variant_keys=True))
    full = threading.Event()
    write_private = agent_module.write_private

    def gamma_disk_full(path, *args: Any, **kwargs: Any) -> Any:
        if full.is_set() and configs["gamma"].state_dir in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_private(path, *args, **kwargs)

    monkeypatch.setattr(agent_module, "write_private", gamma_disk_full)
    monkeypatch.setattr(agent_module, "DISK_FULL_RETRY_SECONDS", 0.0)
    holder = {"coordinator": Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=names)}
    engine = holder["coordinator"]
    agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in names}
    job_id = engine.submit({"analysis": "census", "min_allele_count": 0, "stage_timeout": 600}, "analyst")
    full.set()  # gamma's disk fills once its agent is up
    failures: list[str] = []
    while engine.status(job_id)["status"] == "running":
        for name in names:
            task = engine.next_task(name)
            if task is None:
                continue
            try:
                agents[name].handle(task)
            except DiskFull as error:
                failures.append(str(error))
                status = engine.status(job_id)
                assert status["waiting_for"] == ["gamma"] and not status["declined"], status
                if len(failures) == 3:
                    full.clear()  # the operator frees space; gamma's next try goes through
    assert engine.status(job_id)["status"] == "done"
    assert engine.results(job_id)["summary"]["sites"] == list(names)
    assert len(failures) == 3
    assert failures[0].startswith(f"site gamma: disk full under its state directory {configs['gamma'].state_dir}")
    assert "the job resumes once space is freed" in failures[0]
