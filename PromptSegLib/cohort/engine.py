"""Where a cohort runs: a Dask cluster started on this machine (default), a running Dask scheduler, or workers
started as Slurm/PBS batch jobs through dask-jobqueue."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PromptSegLib.cpus import usable_cores
from PromptSegLib.errors import PromptSegError

JOBQUEUES = ("slurm", "pbs")


@dataclass(frozen=True)
class EngineOptions:
    """Where the cases run.

    Attributes:
        scheduler: address of a running Dask scheduler (``tcp://HOST:PORT``); None: start a cluster.
        jobqueue: ``slurm`` or ``pbs``: start workers as batch jobs (dask-jobqueue); None: on this machine.
        workers: worker processes on this machine (default: cores / torch threads), or batch jobs to start (1).
        job_cores: cores per batch job (each job runs ``job_cores // threads`` worker processes).
        job_memory: memory per batch job, e.g. ``16GB``.
        queue, account, walltime: the batch system's partition/queue, account and time limit (``HH:MM:SS``).
        interface: network interface of the scheduler and the workers on a cluster, e.g. ``ib0``.
        job_directives: extra lines for the job script's header, e.g. ``--gres=gpu:1``.

    A batch option not given here comes from the site's dask-jobqueue configuration (``jobqueue.yaml``).
    """

    scheduler: str | None = None
    jobqueue: str | None = None
    workers: int | None = None
    job_cores: int | None = None
    job_memory: str | None = None
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    interface: str | None = None
    job_directives: tuple[str, ...] = ()


def default_workers(threads: int) -> int:
    """Local worker processes: the CPU cores this process may use, divided by torch threads per worker."""
    return max(1, usable_cores() // max(1, threads))


def jobqueue_cluster(options: EngineOptions, threads: int) -> Any:
    """A dask-jobqueue ``SLURMCluster`` or ``PBSCluster`` (no job submitted yet): each job runs
    ``job_cores // threads`` worker processes.

    Raises:
        PromptSegError: dask-jobqueue is not installed, or a required setting (cores, memory) is missing.
    """
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise PromptSegError("--slurm and --pbs start workers through dask-jobqueue: pip install dask-jobqueue") \
            from exc
    if options.jobqueue not in JOBQUEUES:
        raise PromptSegError(f"unknown batch system {options.jobqueue!r}: use one of {', '.join(JOBQUEUES)}")
    cls = dask_jobqueue.SLURMCluster if options.jobqueue == "slurm" else dask_jobqueue.PBSCluster
    given = {"cores": options.job_cores, "memory": options.job_memory, "queue": options.queue,
             "account": options.account, "walltime": options.walltime, "interface": options.interface,
             "processes": max(1, options.job_cores // threads) if options.job_cores else None,
             "job_extra_directives": list(options.job_directives) or None}
    try:
        return cls(**{key: value for key, value in given.items() if value is not None})
    except ValueError as exc:  # e.g. no cores or memory given nor configured
        raise PromptSegError(f"{options.jobqueue} cluster: {str(exc).strip().splitlines()[0]}") from exc


@contextlib.contextmanager
def open_client(options: EngineOptions, threads: int) -> Iterator[tuple[Any, str | None]]:
    """A Dask client on the cluster ``options`` name, and the dashboard address (None when not served).

    A cluster started here (local or batch jobs) is closed on exit. A task whose worker dies is retried once,
    then reported lost (local and batch clusters; a running scheduler keeps its own setting).

    Raises:
        PromptSegError: the scheduler cannot be reached, or the batch cluster cannot be set up.
    """
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        if options.scheduler:
            try:
                client = Client(options.scheduler, timeout="30s")
            except OSError as exc:
                raise PromptSegError(f"cannot reach the Dask scheduler at {options.scheduler}: "
                                     f"{str(exc).strip().splitlines()[0]}") from exc
            with client:
                yield client, _dashboard(client)
            return
        if options.jobqueue:
            cluster = jobqueue_cluster(options, threads)
            cluster.scale(jobs=options.workers or 1)
        else:
            cluster = LocalCluster(n_workers=options.workers or default_workers(threads), threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:8787",
                                   silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            yield client, _dashboard(client)


def _dashboard(client: Any) -> str | None:
    """The dashboard's address, when the scheduler serves one (it needs bokeh)."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None or "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return client.dashboard_link
