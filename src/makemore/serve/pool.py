"""Where sampling and scoring run: worker processes, each with its own loaded runs and one torch thread.

Why processes: a decoding step of a small model is many tiny torch calls whose Python overhead holds the GIL, so two
threads sample no faster than one (measured: 40 requests of n=20 from a transformer took 0.66 s on one thread and
0.68 s on two). Two processes use both cores. Each worker uses one intra-op thread: a step is too small to split,
and a second thread only waits for a busy core.

Why a process of our own per worker rather than a ProcessPoolExecutor: the per-request time limit. A request that
runs past it (a regex that almost nothing matches, say) has its worker killed and replaced, so it cannot keep a core
busy for minutes after its client was told no.

A seeded request gives the same answer every time, so answers are kept (LRU) keyed by the request and the run's
file stamps: a shared link opened twenty times is computed once. Results never depend on which worker ran them or
what else ran meanwhile: each request seeds its own generator.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import queue
import threading
from collections import OrderedDict
from typing import Any

from makemore.errors import MakemoreError
from makemore.serve.runs import NotFound, RunTable

LOAD_LIMIT = 300.0  # seconds a worker may take to load a run (the time limit applies to the work after it)


class TimeLimit(MakemoreError):
    """A request ran past the per-request time limit: 408."""


class WorkerCrash(RuntimeError):
    """A worker process died (out of memory, killed): 500 with one line."""


def _worker_main(connection: Any, paths: list[str], runs_dir: str | None) -> None:
    """A worker process: answer (kind, args) with ("ok", result) or ("error", kind of error, message)."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server ends us

    from makemore.serve.tasks import TASKS

    torch.set_num_threads(1)
    table = RunTable(paths, runs_dir)
    connection.send(("ready",))  # imports done: the time limit starts counting from here
    while True:
        try:
            kind, args = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            reply = ("ok", TASKS[kind](table, args))
        except NotFound as error:
            reply = ("error", "not_found", str(error))
        except MakemoreError as error:
            reply = ("error", "user", str(error))
        except Exception as error:  # noqa: BLE001 -- reported to the client as one line; the worker lives on
            reply = ("error", "internal", f"{type(error).__name__}: {error}")
        connection.send(reply)


class _Worker:
    def __init__(self, context: Any, table: RunTable):
        self.parent, child = context.Pipe()
        runs_dir = str(table.runs_dir) if table.runs_dir else None
        self.process = context.Process(
            target=_worker_main, args=(child, [str(p) for p in table.paths], runs_dir), daemon=True
        )
        self.process.start()
        child.close()
        self.loaded: set[tuple[str, tuple]] = set()  # (run, weights' stamp) this process has loaded

    def ready(self, timeout: float = 120.0) -> bool:
        """Wait until the new process has imported everything (a spawned process starts from scratch)."""
        try:
            return self.parent.poll(timeout) and self.parent.recv() == ("ready",)
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.parent.close()


def _raise(kind: str, message: str) -> None:
    if kind == "not_found":
        raise NotFound(message)
    if kind == "user":
        raise MakemoreError(message)
    raise WorkerCrash(message)


class Pool:
    """`await pool.call("sample", args)`: the task's result, or its MakemoreError (NotFound, TimeLimit, ...)."""

    def __init__(self, table: RunTable, workers: int = 2, time_limit: float = 10.0, cache_size: int = 512):
        self.table = table
        self.time_limit = time_limit
        self.workers = workers
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.cache_size = cache_size
        self.cache_lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.closed = False
        self.inline: concurrent.futures.ThreadPoolExecutor | None = None
        if workers == 0:  # tests and debugging: one thread of this process, no kill on the time limit
            self.inline = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="makemore-sample")
        self.live: list[_Worker] = []

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads and torch state
        for number in range(self.workers):
            thread = threading.Thread(target=self._serve, args=(context,), name=f"makemore-worker-{number}")
            thread.daemon = True
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.closed = True
        for _ in self.threads:
            self.jobs.put(None)
        for worker in list(self.live):
            worker.kill()
        if self.inline is not None:
            self.inline.shutdown(wait=False, cancel_futures=True)

    def _serve(self, context: Any) -> None:
        """One dispatcher thread per worker process: hand it jobs one at a time; kill and replace it on a
        timeout."""
        worker = self._start(context)
        while True:
            job = self.jobs.get()
            if job is None or self.closed:
                return
            kind, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                steps = self._steps(worker, kind, args)
            except MakemoreError as error:  # (the run went away since the request was checked)
                future.set_exception(error)
                continue
            try:
                for step, limit in steps:
                    worker.parent.send(step)
                    if not worker.parent.poll(limit):
                        raise TimeLimit(self._too_long())
                    status, *rest = worker.parent.recv()
                    if status != "ok":
                        break
            except (TimeLimit, EOFError, OSError) as error:
                self.live.remove(worker)
                worker.kill()
                worker = self._start(context)
                if not isinstance(error, TimeLimit):
                    error = WorkerCrash("the worker process stopped (out of memory?)")
                future.set_exception(error)
                continue
            if status == "ok":
                future.set_result(rest[0])
            else:
                try:
                    _raise(*rest)
                except Exception as error:  # noqa: BLE001 -- handed to the waiting request
                    future.set_exception(error)

    def _steps(self, worker: _Worker, kind: str, args: dict[str, Any]) -> list[tuple[tuple[str, dict], float]]:
        """The messages for one job, each with its time limit: first loading the run where this worker has not
        loaded this version of it (not counted against the request's limit: a large run's novelty index takes a
        while), then the task."""
        steps = []
        version = (args["run"], self.table.entry(args["run"]).model_stamp)
        if version not in worker.loaded:
            worker.loaded.add(version)
            steps.append((("load", {"run": args["run"]}), max(LOAD_LIMIT, self.time_limit)))
        return steps + [((kind, args), self.time_limit)]

    def _start(self, context: Any) -> _Worker:
        worker = _Worker(context, self.table)
        worker.ready()  # (one that never gets ready fails its first job, and is replaced then)
        self.live.append(worker)
        return worker

    def _too_long(self) -> str:
        return (
            f"the request took longer than the server's {self.time_limit:g} s limit; "
            "ask for fewer items or looser constraints"
        )

    def _key(self, kind: str, args: dict[str, Any]) -> str | None:
        """A cache key when the answer is determined by the request (a seed given, or scoring), else None."""
        if kind == "sample" and args.get("seed") is None and args.get("best") is None:
            return None
        stamp = self.table.entry(args["run"]).model_stamp  # (also: an unknown run is a 404 before any work)
        return json.dumps([kind, args, stamp], sort_keys=True)

    async def call(self, kind: str, args: dict[str, Any]) -> Any:
        key = self._key(kind, args)
        if key is not None:
            with self.cache_lock:
                if key in self.cache:
                    self.cache.move_to_end(key)
                    return self.cache[key]
        if self.inline is not None:
            from makemore.serve.tasks import TASKS

            future = self.inline.submit(TASKS[kind], self.table, args)
        else:
            future = concurrent.futures.Future()
            self.jobs.put((kind, args, future))
        # a worker enforces the limit on the work itself (the margin covers the wait for a worker: starting one,
        # loading a run, the requests queued before this one); inline work cannot be stopped, only answered for
        limit = self.time_limit if self.inline is not None else LOAD_LIMIT + self.time_limit * 10
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except asyncio.TimeoutError:
            raise TimeLimit(self._too_long()) from None
        if key is not None:
            with self.cache_lock:
                self.cache[key] = result
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return result
