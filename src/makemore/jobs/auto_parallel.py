"""Members of a `--model auto` plan trained side by side, one process and one thread each.

A small network's training step is many small operations, so one process per core beats one process on all
cores (docs/performance.md): on a 2-core CPU two members side by side each get the whole budget instead of half
of it. Each member is a normal `train()` call in a spawned process; its results and evaluations come back through
a queue. A stop (Ctrl-C, SIGTERM: the parent's `should_stop`) reaches every member through an event, and each
saves its checkpoint and returns, so `--resume` continues it exactly. A member whose parent dies (SIGKILL) stops
the same way at its next step rather than run on alone holding its run directory.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

from makemore.errors import MakemoreError

POLL_SECONDS = 0.2
FORWARDED = ("eval",)  # what a member reports while it trains (its log lines stay in its metrics.jsonl)


def result_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the parent needs of a member's train() result (plain data: it crosses a process boundary)."""
    val = result.get("val")
    keep = ("stopped", "step", "elapsed", "message")
    return {key: result.get(key) for key in keep} | {"val": {"nll": val["nll"]} if val else None}


def member_main(
    train: Callable[..., dict[str, Any]],
    name: str,
    kwargs: dict[str, Any],
    events: Any,
    stop: Any,
    parent: int,
) -> None:
    """A member's process: train, report, and stop when asked or when the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != parent

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] in FORWARDED:
            events.put({**event, "member": name})

    try:
        result = train(**kwargs, samples=0, on_event=on_event, should_stop=should_stop)
        events.put({"event": "member_done", "member": name, "result": result_summary(result)})
    except MakemoreError as error:
        events.put({"event": "member_error", "member": name, "message": str(error)})
    except BaseException as error:  # a bug: report it in one line rather than leave the parent waiting
        events.put({"event": "member_error", "member": name, "message": f"{type(error).__name__}: {error}"})


def run_side_by_side(
    train: Callable[..., dict[str, Any]],
    members: list[tuple[str, dict[str, Any]]],
    on_event: Callable[[dict[str, Any]], None],
    on_done: Callable[[str, dict[str, Any]], None],
    should_stop: Callable[[], bool] | None,
    on_start: Callable[[dict[str, int]], None] = lambda pids: None,
) -> bool:
    """Train `members` ([(name, train kwargs)]) at once; `on_start({name: pid})` once they run, `on_done(name,
    summary)` as each finishes (interrupted ones included). Returns whether a stop was asked. A member's error
    stops the others and is raised."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    events, stop = context.Queue(), context.Event()
    processes = {
        name: context.Process(target=member_main, args=(train, name, kwargs, events, stop, os.getpid()), daemon=True)
        for name, kwargs in members
    }
    for process in processes.values():
        process.start()
    on_start({name: process.pid for name, process in processes.items()})
    pending, error, stopped = set(processes), None, False
    try:
        while pending:
            if not stopped and should_stop is not None and should_stop():
                stopped = True
                stop.set()
            try:
                event = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                for name in [name for name in pending if not processes[name].is_alive()]:
                    if processes[name].exitcode not in (0, None):  # died without a word (killed, out of memory)
                        pending.discard(name)
                        error = error or f"member {name} ended with exit status {processes[name].exitcode}"
                        stop.set()
                continue
            if event["event"] == "member_done":
                pending.discard(event["member"])
                on_done(event["member"], event["result"])
            elif event["event"] == "member_error":
                pending.discard(event["member"])
                error = error or f"member {event['member']}: {event['message']}"
                stop.set()
            else:
                on_event(event)
    finally:
        stop.set()
        for process in processes.values():
            process.join(timeout=60)
    if error:
        raise MakemoreError(error)
    return stopped


def wait_for_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait until the processes `pids` are gone (members of a killed run save and stop at their next step);
    returns those still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if process_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        alive = [pid for pid in alive if process_alive(pid)]
    return alive


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has that number now
        return False
    return True
