"""Training jobs, one at a time: a queue and one worker thread that calls `makemore.train` (the function behind
`makemore train`), keeping what it reports for the page's live curve.

Stopping a job is the CLI's first Ctrl-C: `should_stop` turns true, the trainer saves a checkpoint after the current
step and returns, and the run can be resumed. Closing the queue (the server shutting down) stops the running job
that way and waits for its checkpoint.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from makemore.errors import MakemoreError
from makemore.jobs.train import train
from makemore.serve.runs import Conflict

MAX_QUEUED = 8  # jobs waiting behind the running one
MAX_EVENTS = 50_000  # events kept per job (a curve point each); later train events only update the progress
FINAL = ("finished", "stopped", "failed", "cancelled")


class QueueFull(MakemoreError):
    """Too many training jobs waiting: 429."""


@dataclass
class Job:
    id: str
    run: str  # the run's name (its directory's name)
    path: Path
    kwargs: dict[str, Any]  # for `train`
    status: str = "queued"  # queued, running, finished, stopped, failed, cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    result: dict[str, Any] | None = None
    stop_requested: bool = False
    last_train: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    first_step: tuple[float, int] | None = None  # (wall time, step) of this job's first logged step: the ETA's base

    def add(self, event: dict[str, Any]) -> None:
        """`on_event`: keep the event (NaN as None: JSON has no NaN) and the latest of each kind."""
        event = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}
        kind = event.get("event")
        if kind == "train":
            self.last_train = event
            if self.first_step is None:
                self.first_step = (time.time(), int(event["step"]))
        elif kind == "eval":
            self.last_eval = event
        if kind != "train" or len(self.events) < MAX_EVENTS:  # (streams index this list: it only grows)
            self.events.append(event)

    def should_stop(self) -> bool:
        return self.stop_requested

    def progress(self) -> dict[str, Any]:
        """step, max_steps, elapsed (training seconds), eta (seconds left at this job's pace), latest losses."""
        last = self.last_train or {}
        step, total = last.get("step", 0), last.get("max_steps")
        eta = None
        if self.status == "running" and self.first_step and total and step > self.first_step[1]:
            pace = (time.time() - self.first_step[0]) / (step - self.first_step[1])  # seconds a step
            eta = round(max(total - step, 0) * pace, 1)
        return {
            "step": step,
            "max_steps": total,
            "elapsed": last.get("elapsed"),
            "eta": eta,
            "train_loss": last.get("train_loss"),
            "val_loss": (self.last_eval or {}).get("val_loss"),
        }

    def public(self, position: int | None = None) -> dict[str, Any]:
        out = {
            "id": self.id,
            "run": self.run,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "error": self.error,
            "queue_position": position,
            "resume": bool(self.kwargs.get("resume")),
            **self.progress(),
        }
        if self.result is not None:
            out["result"] = self.result
        return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of `train`'s result (plain numbers; no paths)."""
    val = result.get("val") or {}
    return {
        "stopped": result.get("stopped"),
        "step": result.get("step"),
        "elapsed": result.get("elapsed"),
        "best_val": result.get("best_val"),
        "val_nll": val.get("nll"),
        "message": result.get("message"),
        "samples": [s["item"] for s in result.get("samples") or []][:20],
    }


class TrainQueue:
    """Jobs by id; one worker thread runs them in order."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.waiting: deque[Job] = deque()
        self.current: Job | None = None
        self.lock = threading.Condition()
        self.ids = itertools.count(1)
        self.closed = False
        self.thread = threading.Thread(target=self._work, name="makemore-train", daemon=True)
        self.thread.start()

    def submit(self, run: str, path: Path, kwargs: dict[str, Any]) -> Job:
        with self.lock:
            if self.closed:
                raise MakemoreError("the server is shutting down")
            if len(self.waiting) >= MAX_QUEUED:
                raise QueueFull(f"{MAX_QUEUED} training jobs are waiting already; stop one or wait")
            busy = [job for job in self.active() if job.path == path]
            if busy:
                raise Conflict(f"run {run!r} already has a training job ({busy[0].id}, {busy[0].status})")
            job = Job(str(next(self.ids)), run, path, kwargs)
            self.jobs[job.id] = job
            self.waiting.append(job)
            self.lock.notify_all()
            return job

    def active(self) -> list[Job]:
        return ([self.current] if self.current else []) + list(self.waiting)

    def position(self, job: Job) -> int | None:
        """0 for the running job, 1.. in the queue, None once it ended."""
        if job is self.current:
            return 0
        return next((i + 1 for i, waiting in enumerate(self.waiting) if waiting is job), None)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def stop(self, job: Job) -> None:
        with self.lock:
            if job.status == "queued" and job in self.waiting:
                self.waiting.remove(job)
                job.status, job.ended = "cancelled", time.time()
            job.stop_requested = True
            self.lock.notify_all()

    def busy_paths(self) -> set[Path]:
        with self.lock:
            return {job.path for job in self.active()}

    def close(self, wait: float = 120.0) -> None:
        """Stop the running job (it saves a checkpoint), cancel the waiting ones, wait for the worker."""
        with self.lock:
            self.closed = True
            for job in list(self.waiting):
                job.status, job.ended, job.stop_requested = "cancelled", time.time(), True
            self.waiting.clear()
            if self.current is not None:
                self.current.stop_requested = True
            self.lock.notify_all()
        self.thread.join(wait)

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.closed:
                    self.lock.wait()
                if self.closed:
                    return
                job = self.current = self.waiting.popleft()
                job.status, job.started = "running", time.time()
            try:
                result = train(**job.kwargs, on_event=job.add, should_stop=job.should_stop)
                job.result = summary(result)
                job.status = "stopped" if result.get("stopped") == "interrupted" else "finished"
            except MakemoreError as error:
                job.status, job.error = "failed", str(error)
            except Exception as error:  # noqa: BLE001 -- the job fails with one line; the server goes on
                job.status, job.error = "failed", f"{type(error).__name__}: {error}"
            with self.lock:
                job.ended = time.time()
                job.add({"event": "end", "status": job.status, "error": job.error})
                self.current = None
                self.lock.notify_all()
