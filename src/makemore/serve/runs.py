"""Which runs the server may serve, by name, and the loaded `Run`s it keeps.

The server serves only the runs it was given: each argument is a run directory or a directory of runs, and a run is
known by its directory's name. A name from a request is only ever looked up in that table (never joined to a
path), so "../x", "/etc" or "a/b" are simply unknown names: 404.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from makemore.api import Run
from makemore.errors import MakemoreError
from makemore.models import transformer_step
from makemore.runs import checkpoint as ckpt
from makemore.runs.info import describe_run

SCAN_EVERY = 1.0  # seconds a directory listing is trusted: a run trained meanwhile appears within this
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a new run's name: one path component, no dot-dot


class NotFound(MakemoreError):
    """An unknown run, job or plot: 404."""


class Conflict(MakemoreError):
    """The thing exists already or is busy: 409."""


class TooLarge(MakemoreError):
    """An upload over the size limit: 413."""


def is_run(path: Path) -> bool:
    return (path / ckpt.RUN_FILE).is_file()


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise MakemoreError(
            f"run name {name[:40]!r}: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or "
            "digit)"
        )
    return name


MODEL_FILES = (ckpt.RUN_FILE, ckpt.WEIGHTS_FILE)  # what a loaded Run holds
INFO_FILES = MODEL_FILES + (ckpt.CHECKPOINT_FILE, ckpt.METRICS_FILE)  # what describe_run and the loss plot read


def stamp(path: Path, files: tuple[str, ...] = INFO_FILES) -> tuple[float, ...]:
    """The files' modification times: a run trained or resumed meanwhile is read again."""
    stamps = []
    for file in files:
        try:
            stamps.append((path / file).stat().st_mtime)
        except OSError:
            stamps.append(0.0)
    return tuple(stamps)


@dataclass
class Entry:
    path: Path
    model_stamp: tuple[float, ...] = ()  # the weights' (a run in training logs often, saves its weights seldom)
    stamp: tuple[float, ...] = ()  # all files' (info, plots)
    run: Run | None = None
    info: dict[str, Any] | None = None


class RunTable:
    """Runs by name: the runs given, plus every run inside the directories given (looked for again on each
    `names()`, so a run trained meanwhile appears). New runs go into `runs_dir`."""

    def __init__(self, paths: list[str | Path], runs_dir: str | Path | None = None):
        self.paths = [Path(p).resolve() for p in paths]
        for path in self.paths:
            if not path.is_dir():
                raise MakemoreError(f"{path}: not a directory (give run directories or directories of runs)")
        dirs = [p for p in self.paths if not is_run(p)]
        self.runs_dir = Path(runs_dir).resolve() if runs_dir is not None else (dirs[0] if dirs else None)
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._scanned: tuple[float, dict[str, Path]] = (-SCAN_EVERY, {})

    def scan(self, fresh: bool = False) -> dict[str, Path]:
        """Name -> run directory. A name seen twice keeps the first (the order given). Listed again after
        SCAN_EVERY seconds (a busy server answers many requests a second, each naming its run)."""
        when, found = self._scanned
        if fresh or time.monotonic() - when >= SCAN_EVERY:
            found = self._scan()
            self._scanned = (time.monotonic(), found)
        return found

    def _scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        places = list(self.paths) + ([self.runs_dir] if self.runs_dir and self.runs_dir not in self.paths else [])
        for path in places:
            if is_run(path):
                found.setdefault(path.name, path)
            elif path.is_dir():
                for child in sorted(path.iterdir()):
                    if not child.name.startswith(".") and is_run(child):
                        found.setdefault(child.name, child)
        return found

    def names(self) -> list[str]:
        return list(self.scan(fresh=True))

    def path(self, name: str) -> Path:
        if not isinstance(name, str) or not name:
            raise NotFound("no run given")
        path = self.scan().get(name)
        if path is None:
            path = self.scan(fresh=True).get(name)  # (a run created since the last listing)
        if path is None:
            raise NotFound(f"unknown run {name[:80]!r}")
        return path

    def entry(self, name: str) -> Entry:
        path = self.path(name)
        now = stamp(path)
        weights = now[: len(MODEL_FILES)]
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.path != path:
                entry = self._entries[name] = Entry(path)
            if entry.model_stamp != weights:
                entry.model_stamp, entry.run = weights, None
            if entry.stamp != now:
                entry.stamp, entry.info = now, None
            return entry

    def load(self, name: str) -> Run:
        """The run, loaded once (again when its files change)."""
        entry = self.entry(name)
        if entry.run is None:
            run = Run.load(entry.path)
            transformer_step.install(run.model)  # the same logits with less Python per decoding step
            run.novelty.workers = 1  # rapidfuzz's thread fan-out costs more than it saves on a page's few items
            run.novelty.nearest(["\x00"])  # builds the edit-distance index now, not in the first request's time
            entry.run = run
        return entry.run

    def info(self, name: str) -> dict[str, Any]:
        """`describe_run`, with the run's name where the CLI shows its path (the page need not know paths)."""
        entry = self.entry(name)
        if entry.info is None:
            entry.info = {**describe_run(entry.path), "run": name}
        return entry.info

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.names():
            try:
                info = self.info(name)
            except MakemoreError as error:  # a broken or half-written run is listed with what is wrong
                rows.append({"name": name, "model": None, "val_nll": None, "error": str(error)})
                continue
            rows.append(
                {
                    "name": name,
                    "model": info["model"],
                    "val_nll": info["best_val_loss"],
                    "steps": info["steps"],
                    "parameters": info["parameters"],
                    "mode": info["data"].get("mode", "line"),
                    "labels": list(info["data"].get("labels") or []),  # a labelled run's: sample given one
                }
            )
        return rows
