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
when asked for); code that computes a graph calls :func:`dask_client`, which reuses the
active client, so one cluster serves every step of a workflow run.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError

__all__ = ["LOCAL_SCHEDULERS", "JOBQUEUE_SCHEDULERS", "ClusterOptions", "parse_scheduler", "is_distributed", "dask_client", "dask_session"]

log = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync")
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
    import dask_jobqueue

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
    import distributed

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
    import distributed

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
    import distributed

    if performance_report is not None:
        try:
            import bokeh  # noqa: F401  (distributed renders the report with it)
        except ImportError:
            raise ConfigurationError("--performance-report needs bokeh: pip install 'bokeh>=3.1'") from None
    with _new_client(scheduler, options or ClusterOptions()) as client:
        report = contextlib.nullcontext() if performance_report is None else distributed.performance_report(filename=str(performance_report))
        with report:
            yield client
