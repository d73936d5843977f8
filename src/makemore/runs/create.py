"""A new run directory appears only once it is loadable.

A new run is put together in a hidden sibling (`.NAME.partial-PID`): its data splits, run.json, and weights (a
count model's fitted tables, or a neural model's initial weights), then renamed into place in one step. A failure
before that leaves nothing at NAME, so a retry needs no --force; a partial sibling left by a killed process is
removed by the next run of the same name. With --force over an existing directory, makemore's files there are
removed (run.json first, so it never looks complete meanwhile) and the new ones moved in (run.json last); other
files stay.

A neural run trains in place once published. Should it fail before its first checkpoint, `discard` removes it
again: there is nothing to resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from makemore.errors import MakemoreError
from makemore.runs import checkpoint as ckpt
from makemore.runs.lock import RunLock, remove_stale_temp_files

PARTIAL = ".partial-"
# makemore's own files in a run directory (what --force replaces); run.json is first: removed first, written last
RUN_FILES = (
    ckpt.RUN_FILE,
    ckpt.WEIGHTS_FILE,
    ckpt.CHECKPOINT_FILE,
    ckpt.CHECKPOINT_META,
    ckpt.METRICS_FILE,
    "diagnostics.jsonl",
    "samples.txt",
    "train.txt",
    "val.txt",
    "test.txt",
)


def partial_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}{PARTIAL}{os.getpid()}"


def cannot(run_dir: Path, what: str, error: OSError) -> MakemoreError:
    return MakemoreError(f"{run_dir}: cannot {what} ({error.strerror or error})")


def has_content(run_dir: Path) -> bool:
    """Whether a directory holds anything but (perhaps) a lock file."""
    return any(not path.name.startswith(".lock") for path in run_dir.iterdir())


def check_free(run_dir: Path, force: bool) -> None:
    """Refuse, before any work, to start a new run where one (or anything else) already is, unless --force."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: exists and is not a directory")
    try:
        occupied = run_dir.is_dir() and has_content(run_dir)
    except OSError as error:
        raise cannot(run_dir, "read the directory", error) from None
    if occupied and not force:
        raise MakemoreError(f"{run_dir}: already exists; use --force to overwrite or --resume {run_dir} to continue")


def remove_dead_partials(run_dir: Path) -> None:
    """Delete the partial siblings of `run_dir` whose process is gone (killed while putting a run together)."""
    with contextlib.suppress(OSError):
        for path in run_dir.parent.glob(f".{run_dir.name}{PARTIAL}*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def partial(run_dir: Path) -> Iterator[Path]:
    """A fresh hidden sibling to put the run together in; removed however the block ends (published or not)."""
    remove_dead_partials(run_dir)
    work = partial_dir(run_dir)
    try:
        shutil.rmtree(work, ignore_errors=True)  # our own PID's leftover: a previous call in this process failed
        work.mkdir(parents=True)
    except OSError as error:
        raise cannot(run_dir, "create the run directory", error) from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def publish(work: Path, run_dir: Path, force: bool) -> bool:
    """Move the complete run in `work` to `run_dir`; returns whether `run_dir` was created (not forced over)."""
    try:
        if not run_dir.exists() or (run_dir.is_dir() and not has_content(run_dir)):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / ".lock").unlink()  # a stale lock in an empty directory: a rename needs it empty
            os.rename(work, run_dir)  # an empty target is replaced; a non-empty one (a racing run) refuses
            return True
    except OSError as error:
        if run_dir.exists() and has_content(run_dir):
            check_free(run_dir, force)  # another process got there first
        else:
            raise cannot(run_dir, "create the run directory", error) from None
    check_free(run_dir, force)
    with RunLock(run_dir):  # --force must not pull files from under a run that is still training
        replace_files(work, run_dir)
    return False


def replace_files(work: Path, run_dir: Path) -> None:
    """--force: makemore's old files out (run.json first), the new ones in (run.json last)."""
    try:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        remove_stale_temp_files(run_dir)
        names = sorted((path.name for path in work.iterdir()), key=lambda name: name == ckpt.RUN_FILE)
        for name in names:
            os.replace(work / name, run_dir / name)
    except OSError as error:
        raise cannot(run_dir, "replace the run's files", error) from None


def discard(run_dir: Path, created: bool) -> None:
    """Remove a run that failed before anything worth resuming: the directory if this process created it, else
    makemore's files in it."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in RUN_FILES:
        with contextlib.suppress(OSError):
            (run_dir / name).unlink(missing_ok=True)
