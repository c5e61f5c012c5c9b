"""Where a Dask-backed step runs: ``--scheduler threads|processes|synchronous|tcp://HOST:PORT|slurm|pbs``.

genofed writes no cluster code of its own; this module only maps the choice to Dask:

- ``threads``, ``processes``, ``synchronous``: dask's local schedulers (no client);
- ``tcp://HOST:PORT`` (or ``HOST:PORT``): ``distributed.Client(address)`` on a running
  ``dask.distributed`` scheduler;
- ``slurm`` / ``pbs``: ``dask_jobqueue.SLURMCluster`` / ``PBSCluster`` and a client on it.
  Queue, cores, memory, walltime and account come from :class:`ClusterOptions` (the
  CLI) or, where not given, from the Dask configuration (``jobqueue.slurm.*`` /
  ``jobqueue.pbs.*``, e.g. ``~/.config/dask/jobqueue.yaml``), as dask-jobqueue reads it.

:func:`dask_session` opens the client for a whole command (and the performance report
when asked for); code that computes a graph calls :func:`compute_graph`, which runs it on
a local scheduler or on :func:`dask_client`, the active client, so one cluster serves
every step of a workflow run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask_jobqueue
import distributed
from dask.diagnostics import ProgressBar
from tqdm import tqdm

from pipeline.errors import ConfigurationError

__all__ = [
    "LOCAL_SCHEDULERS",
    "JOBQUEUE_SCHEDULERS",
    "ClusterOptions",
    "parse_scheduler",
    "is_distributed",
    "dask_client",
    "dask_session",
    "compute_graph",
    "progress_bar",
]

log = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync")
_DASK_NAMES = {"threads": "threads", "processes": "processes", "synchronous": "sync", "sync": "sync"}
JOBQUEUE_SCHEDULERS = ("slurm", "pbs")
_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+]*://\S+|[\w.\-\[\]:]+:\d+)$")


@dataclass(frozen=True)
class ClusterOptions:
    """Batch-system worker jobs for ``slurm``/``pbs`` (``None``: the Dask configuration's value).

    Attributes:
        queue: partition (Slurm) or queue (PBS).
        cores: cores per worker job.
        memory: memory per worker job (``4GB``).
        walltime: per worker job (``01:00:00``).
        account: account to charge.
        jobs: worker jobs to start.
        worker_timeout: seconds to wait for the first worker before failing (``None``: wait).
    """

    queue: str | None = None
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    account: str | None = None
    jobs: int = 1
    worker_timeout: float | None = None


def parse_scheduler(scheduler: str) -> str:
    """Checks a ``--scheduler`` value early.

    Raises:
        ConfigurationError: naming the accepted values.
    """
    if scheduler in LOCAL_SCHEDULERS or scheduler in JOBQUEUE_SCHEDULERS or _ADDRESS.match(scheduler):
        return scheduler
    raise ConfigurationError(
        f"unknown scheduler {scheduler!r}; use threads, processes, synchronous, a dask.distributed address "
        "such as tcp://host:8786, slurm or pbs"
    )


def is_distributed(scheduler: str) -> bool:
    """Whether the scheduler needs a ``distributed.Client`` (an address, ``slurm``, ``pbs``)."""
    return scheduler not in LOCAL_SCHEDULERS


def _jobqueue_cluster(kind: str, options: ClusterOptions) -> Any:
    cluster_class = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    given = {
        "queue": options.queue, "cores": options.cores, "memory": options.memory, "walltime": options.walltime,
        "account": options.account,
    }
    kwargs = {key: value for key, value in given.items() if value is not None}
    try:
        cluster = cluster_class(**kwargs)
    except ValueError as error:
        raise ConfigurationError(
            f"cannot configure a {kind} cluster ({error}); give --cores and --memory (and --queue, --walltime, "
            f"--account as the site needs) or set them under jobqueue.{kind} in the Dask configuration "
            "(~/.config/dask/jobqueue.yaml)"
        ) from None
    log.info("%s worker job script:\n%s", kind, cluster.job_script())
    cluster.scale(jobs=options.jobs)
    return cluster


@contextlib.contextmanager
def _new_client(scheduler: str, options: ClusterOptions) -> Iterator[Any]:
    if scheduler in JOBQUEUE_SCHEDULERS:
        with _jobqueue_cluster(scheduler, options) as cluster, distributed.Client(cluster) as client:
            if options.worker_timeout is not None:
                try:
                    client.wait_for_workers(1, timeout=options.worker_timeout)
                except TimeoutError:
                    raise ConfigurationError(
                        f"no {scheduler} worker job started within {options.worker_timeout:g} s; check the queue "
                        f"(squeue/qstat) and the worker logs"
                    ) from None
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout="30s")
    except OSError as error:
        raise ConfigurationError(f"cannot reach the dask.distributed scheduler at {scheduler} ({error}); is it running?") from None
    with client:
        yield client


@contextlib.contextmanager
def dask_client(scheduler: str, *, options: ClusterOptions | None = None) -> Iterator[Any]:
    """The client a graph is computed on: the active one, or a new one closed afterwards."""
    try:
        active = distributed.default_client()
    except ValueError:
        active = None
    if active is not None and active.status == "running":
        yield active
        return
    with _new_client(scheduler, options or ClusterOptions()) as client:
        yield client


@contextlib.contextmanager
def dask_session(
    scheduler: str, *, options: ClusterOptions | None = None, performance_report: Path | str | None = None
) -> Iterator[Any]:
    """Opens the command's client (``None`` for a local scheduler) and, if asked, its performance report.

    Raises:
        ConfigurationError: a performance report asked of a local scheduler, or a
            cluster that cannot be configured or reached.
    """
    scheduler = parse_scheduler(scheduler)
    if not is_distributed(scheduler):
        if performance_report is not None:
            raise ConfigurationError(
                f"--performance-report needs a dask.distributed scheduler (tcp://HOST:PORT, slurm or pbs), not {scheduler}; "
                "use --progress for a progress bar"
            )
        yield None
        return
    with _new_client(scheduler, options or ClusterOptions()) as client:
        report = contextlib.nullcontext() if performance_report is None else distributed.performance_report(filename=str(performance_report))
        with report:
            yield client


def progress_bar(progress: bool, **kwargs: Any) -> Any:
    """A tqdm bar on stderr when ``progress``, else ``None``."""
    return tqdm(file=sys.stderr, **kwargs) if progress else None


def available_cores() -> int:
    """The cores this process may run on: a batch job's allocation, not the node's count (``os.cpu_count``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _local_pool(scheduler: str, workers: int | None) -> Executor | None:
    """The executor a local scheduler runs on, owned here so that a failure can wait for it."""
    if scheduler == "sync":
        return None
    count = workers or available_cores()
    if scheduler == "threads":
        return ThreadPoolExecutor(count)
    return ProcessPoolExecutor(count, mp_context=multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn")))


def compute_graph(graph: Sequence[Any], *, scheduler: str, workers: int | None, progress: bool, unit: str = "tasks",
                  desc: str = "") -> list[Any]:
    """Computes a list of delayed values once, on ``scheduler``; their results in order.

    When a task fails, the tasks already running finish before the error propagates, so
    none of them writes into a temporary folder after the caller has removed it.
    """
    if scheduler in _DASK_NAMES:
        name = _DASK_NAMES[scheduler]
        pool = _local_pool(name, workers)
        options: dict[str, Any] = {"scheduler": name} if pool is None else {"scheduler": name, "pool": pool}
        if name == "processes":
            options["chunksize"] = 1  # dask batches 6 tasks per process call by default: the bar would jump 0% -> 100%
        bar = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
        try:
            with bar:
                return list(dask.compute(*graph, **options))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    with dask_client(scheduler) as client:  # the active client (--scheduler slurm/pbs, a workflow run) or a new one
        futures = client.compute(list(graph))
        tick = progress_bar(progress, total=len(futures), unit=unit, desc=desc)
        for _ in distributed.as_completed(futures):  # every task ends before an error is raised
            if tick is not None:
                tick.update(1)
        if tick is not None:
            tick.close()
        return list(client.gather(futures))
