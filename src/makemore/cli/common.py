"""What every command shares: the one-line-error parser, signal handling, progress, output."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from makemore.errors import MakemoreError
from makemore.runs import checkpoint as ckpt
from makemore.training.trainer import resolve_device

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        raise MakemoreError(f"{self.prog}: {message}")


class StopFlag:
    """First Ctrl-C / SIGTERM asks the trainer to save and stop after the current step; a second one aborts."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        def handler(signum, frame):
            if self.signal is not None:
                raise Interrupted(signum)
            self.signal = signum

        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            signal.signal(signal.SIGINT, handler)
            signal.signal(signal.SIGTERM, handler)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM outside training's save-and-stop: main() prints one line, exits 128 + signal (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_on_signals() -> Callable[[], None]:
    """Make SIGINT and SIGTERM raise Interrupted (sampling, scoring, ...: nothing to save); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        raise Interrupted(signum)

    for signum in previous:
        signal.signal(signum, handler)

    def undo() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)

    return undo


def quiet_broken_pipe() -> int:
    """The reader of our output went away (makemore sample | head): stop quietly, like a process killed by SIGPIPE."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
    return 128 + signal.SIGPIPE


def progress_printer(total: int, initial: int = 0) -> Callable[[dict], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True)
    shown: dict[str, str] = {}

    def on_event(event: dict) -> None:
        if event["event"] == "train":
            bar.update(event["step"] - bar.n)
            shown.update(loss=f"{event['train_loss']:.4f}", tok_s=f"{event['tokens_per_s']:.0f}")
        elif event["event"] == "eval":
            shown.update(val=f"{event['val_loss']:.4f}")
        elif event["event"] == "warning":
            bar.write(f"makemore: warning: {event['message']}", file=sys.stderr)
            return
        bar.set_postfix(shown, refresh=True)
        if event.get("step", 0) >= total:
            bar.close()

    on_event.close = bar.close  # type: ignore[attr-defined]
    return on_event


def load_run_for_use(run: str, device: str = "cpu"):

    spec, model = ckpt.load_model(run, resolve_device(device))
    return spec, model


def format_items(items: list[dict[str, Any]], fmt: str) -> str:
    """The items as plain lines, aligned text (item, log-prob, status) or JSON lines."""
    if fmt == "plain":
        return "".join(item["item"] + "\n" for item in items)
    if fmt == "text":
        width = max((len(item["item"]) for item in items), default=0)
        return "".join(
            f"{item['item']:<{width}}  {item['unconstrained_logprob']:9.4f}  {item['status']}\n" for item in items
        )
    lines = []
    for item in items:
        record = dict(item)
        for key in ("logprob", "unconstrained_logprob", "score"):
            if key in record:
                record[key] = round(record[key], 6)
        record["char_logprobs"] = [[c, round(lp, 4)] for c, lp in record["char_logprobs"]]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def emit(text: str, out: str | None, count: int, what: str) -> None:
    """Print `text`, or write it atomically to `out` (and say so on stderr)."""
    if out is None:
        sys.stdout.write(text)
        return
    ckpt.atomic_write(Path(out), text.encode("utf-8"))
    print(f"wrote {count} {what} to {out}", file=sys.stderr)
