"""Where a batch runs: a Dask ``LocalCluster`` on this machine, or an existing Dask cluster (``tcp://host:port``).

The batch runner submits one task per series to the client this module opens; Dask does the scheduling, the
retries of tasks whose worker died (bounded by ``distributed.scheduler.allowed-failures``) and the memory limits.
Local workers load this module as a preload (``dask_setup``): they ignore Ctrl-C (the client stops them) and
keep Dask's log quiet. Workers of an existing cluster need mskai installed and the input and output folders at the
same paths as the client.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from mskai import MskaiError, check_range

PRELOAD = "mskai.runner.cluster"


@dataclass
class ClusterOptions:
    workers: int | None = None  # local worker processes (None: one per core, as memory allows)
    threads_per_worker: int = 1
    memory_limit: str = "auto"  # per local worker: "4GB", "auto" (the machine's memory shared), or "0" (none)
    scheduler: str | None = None  # tcp://host:port of an existing cluster instead of a local one
    retries: int = 2  # local cluster: times a task is run again after its worker died (then it is failed)

    def __post_init__(self):
        if self.workers is not None:
            check_range("workers", self.workers, 1, 1024, integer=True)
        check_range("threads per worker", self.threads_per_worker, 1, 256, integer=True)
        check_range("retries", self.retries, 0, 100, integer=True)
        if self.scheduler is not None and not str(self.scheduler).startswith(("tcp://", "tls://")):
            raise MskaiError(f"--scheduler must be a Dask scheduler address such as tcp://host:8786, not "
                             f"{self.scheduler!r}")
        if self.memory_limit not in ("auto", "0"):
            from dask.utils import parse_bytes

            try:
                parse_bytes(self.memory_limit)
            except (ValueError, TypeError):
                raise MskaiError(f"memory limit {self.memory_limit!r} is not a size such as 4GB") from None

    def local_workers(self) -> int:
        """Worker processes for a local cluster: as asked, else one per core with about 3 GB of memory each."""
        if self.workers:
            return self.workers
        import psutil

        return max(1, min(usable_cores() // self.threads_per_worker, psutil.virtual_memory().total // (3 * 2**30)))


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dask_setup(worker=None):
    """Preload of the local workers (processes of their own): Ctrl-C in the terminal reaches the whole process
    group, and only the client acts on it (it closes the cluster); worker deaths go to the manifest, not the log."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _spawn_interpreter():
    """Inside 3D Slicer sys.executable is the application: local workers must be started with PythonSlicer."""
    import multiprocessing

    from mskai.runner.engine import python_executable

    if Path(sys.executable or "").name.lower().startswith("slicer"):
        multiprocessing.set_executable(python_executable())


@contextlib.contextmanager
def open_client(options: ClusterOptions):
    """Yield (client, where): a client of a new local cluster (closed on exit) or of ``options.scheduler``.

    where: {"scheduler": "local" or the address, "workers": count, "dashboard": link or None,
    "threads_by_host": {host: threads of all its workers}}.
    """
    from distributed import Client

    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # worker deaths and failed tasks are reported in the manifest
    cluster = None
    try:
        if options.scheduler:
            try:
                client = Client(options.scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise MskaiError(f"Cannot reach the Dask scheduler at {options.scheduler}: {exc}") from None
        else:
            _spawn_interpreter()  # the batch runner has run check_main_guard() before writing anything
            cluster = _start_local_cluster(options)
            client = Client(cluster)
        with client:
            info = client.scheduler_info()
            shown = "dashboard" in info.get("services", {}) and (options.scheduler or _has_bokeh())
            dashboard = client.dashboard_link if shown else None  # without bokeh the page only says it is missing
            workers = info.get("workers", {}).values()
            threads_by_host = collections.Counter()
            for worker in workers:
                threads_by_host[worker["host"]] += worker["nthreads"]
            yield client, {"scheduler": options.scheduler or "local", "workers": len(workers),
                           "dashboard": dashboard, "threads_by_host": dict(threads_by_host)}
    finally:
        if cluster is not None:
            cluster.close()
        quiet.setLevel(level)


START_ATTEMPTS = 3


def _start_local_cluster(options: ClusterOptions):
    """A LocalCluster; a worker that dies while it starts (killed, out of memory) is not the batch's end: the
    cluster is started again, up to START_ATTEMPTS times, then the failure is one clear error."""
    import dask
    from distributed import LocalCluster

    limit = 0 if options.memory_limit == "0" else options.memory_limit
    failures = []
    for _ in range(START_ATTEMPTS):
        try:
            with dask.config.set({"distributed.scheduler.allowed-failures": options.retries}):
                return LocalCluster(n_workers=options.local_workers(), threads_per_worker=options.threads_per_worker,
                                    processes=True, memory_limit=limit, preload=[PRELOAD], dashboard_address=":0",
                                    scheduler_port=0)
        except (RuntimeError, OSError, TimeoutError) as exc:  # "Nanny failed to start", ports, slow starts
            failures.append(f"{exc.__class__.__name__}: {exc}")
    raise MskaiError(f"Could not start a local Dask cluster ({START_ATTEMPTS} tries; last: {failures[-1]}); "
                     "see --workers and --memory-limit")


def check_main_guard():
    """Local workers are new processes that import the main script again (multiprocessing's "spawn"): a script
    that starts a batch at its top level would start it again in every worker, and a script read from standard
    input cannot be imported at all. Refuse both with what to do, before any process starts."""
    import ast
    import inspect

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if main is None or path is None or getattr(main, "__name__", "") == "__mp_main__" or (
            spec is not None and spec.name.endswith(".__main__")):
        return  # a console (Slicer's, IPython, python -c) or `python -m package`: spawn imports nothing again
    advice = ('put the call under `if __name__ == "__main__":` in a script file, or use `mskai batch ...`')
    if not os.path.isfile(path):
        raise MskaiError(f"A batch cannot start its worker processes from a script read from {path}: {advice}")
    same = os.path.realpath(path)
    lines = [info.lineno for info in inspect.stack(0) if info.frame.f_code.co_name == "<module>"
             and info.frame.f_globals is vars(main) and os.path.realpath(info.frame.f_code.co_filename) == same]
    if not lines:
        return  # the script's top level is not running (code typed into a console, or functions called later)
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return
    guarded = [node for node in ast.walk(tree) if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)]
    if not any(node.lineno <= lines[0] <= node.end_lineno for node in guarded):
        raise MskaiError(f"{Path(path).name} starts a batch at its top level (line {lines[0]}); the batch's worker "
                         f"processes import it again and would start it again: {advice}")


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None
