"""What every command shares: the one-line-error parser, signal handling, progress, output."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from makemore.errors import MakemoreError
from makemore.runs import checkpoint as ckpt
from makemore.training.devices import resolve_device

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2, with a "did you mean" for a
    misspelt flag or choice."""

    def error(self, message: str):
        raise MakemoreError(f"{self.prog}: {message}{self.suggestion(message)}")

    def suggestion(self, message: str) -> str:
        """'; did you mean --max-steps?' when the bad word of argparse's message is close to a real one."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            word, known = choice.group(1), [c.strip("'\" ") for c in choice.group(2).split(",")]
        else:
            flags = re.search(r"unrecognized arguments: (--[\w-]+)", message)
            if not flags:
                return ""
            word, known = flags.group(1).split("=")[0], set(re.findall(r"--[\w-]+", self.format_help()))
        close = difflib.get_close_matches(word, known, n=1)
        return f"; did you mean {close[0]}?" if close else ""


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


def progress_printer(total: int, initial: int = 0, stream: Any = None) -> Callable[[dict], None]:
    """The trainer's events drawn as progress on `stream` (stderr): a tqdm bar on a terminal; elsewhere (a log
    file, a pipe) one plain line per log event, no carriage returns. The callable has `close()`."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return _progress_bar(total, initial, stream)
    return _progress_lines(total, stream)


def _progress_bar(total: int, initial: int, stream: Any) -> Callable[[dict], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=stream, leave=True)
    shown: dict[str, str] = {}

    def on_event(event: dict) -> None:
        if event.get("max_steps") and event["max_steps"] != bar.total:  # a time budget became a step count
            bar.total = event["max_steps"]
        if event["event"] == "train":
            bar.update(event["step"] - bar.n)
            shown.update(loss=f"{event['train_loss']:.4f}", tok_s=f"{event['tokens_per_s']:.0f}")
        elif event["event"] == "eval":
            shown.update(val=f"{event['val_loss']:.4f}")
        elif event["event"] == "warning":
            bar.write(f"makemore: warning: {event['message']}", file=stream)
            return
        else:
            return
        bar.set_postfix(shown, refresh=True)
        if event.get("step", 0) >= bar.total:
            bar.close()

    on_event.close = bar.close  # type: ignore[attr-defined]
    return on_event


def _progress_lines(total: int, stream: Any) -> Callable[[dict], None]:
    """One line per event, e.g. "train | 500/5000 [12.3s] loss 2.1234, 12,345 tok/s"."""
    limit = [total]

    def on_event(event: dict) -> None:
        limit[0] = event.get("max_steps") or limit[0]
        kind = event["event"]
        if kind == "warning":
            line = f"makemore: warning: {event['message']}"
        elif kind in ("train", "eval"):
            where = f"{kind} | {event['step']}/{limit[0]} [{event.get('elapsed', 0.0):.1f}s]"
            if kind == "train":
                line = f"{where} loss {event['train_loss']:.4f}, {event['tokens_per_s']:,.0f} tok/s"
            else:
                line = f"{where} val {event['val_loss']:.4f} (best {event['best_val_loss']:.4f})"
        else:
            return
        print(line, file=stream, flush=True)

    on_event.close = lambda: None  # type: ignore[attr-defined]
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
