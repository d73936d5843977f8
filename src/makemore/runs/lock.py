"""One writer per run directory: an advisory lock (`fcntl.flock`) on RUN/.lock, held while a process trains there.

The kernel releases the lock when its owner exits, however it exits (SIGKILL, a crash, a power cut ends the whole
machine), so there is no stale lock to detect or take over. The file stays behind, empty or naming its last owner
({"pid", "host", "started"}), which only serves the message a second process gets: "in use by pid 1234 on host".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from makemore.errors import MakemoreError

LOCK_FILE = ".lock"


def read_lock(path: str | Path) -> dict | None:
    """The owner a lock file names, or None when it is missing, empty or unreadable."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(info: dict | None) -> str:
    if not info:
        return "another makemore process"
    return f"another makemore process (pid {info.get('pid')} on {info.get('host')})"


class RunLock:
    """`with RunLock(run_dir):` holds the run directory for this process; a second holder is refused at once."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise MakemoreError(f"{self.run_dir}: cannot lock the run directory ({error.strerror or error})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MakemoreError(
                f"{self.run_dir}: in use by {describe(read_lock(self.path))}; wait for it to finish or stop it"
            ) from None
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        with contextlib.suppress(OSError):  # the name is for messages only; a read-only disk still locks
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner.encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no owner to name any more
        os.close(fd)  # closing releases the lock; the file stays (unlinking it would race with a new owner)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def remove_stale_temp_files(run_dir: str | Path) -> list[str]:
    """Delete the hidden temp files (".NAME.XXXX.tmp") that a killed writer left; call only while holding the lock.

    They never look valid (atomic_write renames a temp file into place only once it is complete), but they waste
    space. Returns the names removed.
    """
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed
