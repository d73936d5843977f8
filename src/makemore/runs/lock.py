"""One writer per run directory: a lock file that names its owner, taken over when the owner is dead.

RUN/.lock holds {"pid", "host", "started", "proc_start"}. It is created complete (written to a temp file, then
hard-linked into place, which fails if the lock exists), so a reader never sees a half-written lock. A second
process finding a live owner refuses with a message naming it. A lock whose owner is gone (a SIGKILL, a power cut)
is stale: its PID is not running on this host, or that PID now belongs to a process started at another time (PID
reuse, checked through /proc where there is one). A stale lock is taken over. A lock from another host can't be
checked, so it counts as live and the message says how to remove it.

Taking over renames the stale file to a name unique to this process, then checks that the renamed file is the
stale one it judged; if a third process slipped in its own fresh lock in between, that lock is put back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

from makemore.errors import MakemoreError

LOCK_FILE = ".lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, field 22 of /proc/PID/stat), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def owner_alive(info: dict) -> bool:
    """Whether the process that wrote this lock is still running (unknown hosts count as alive)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not _pid_running(pid):
        return False
    recorded, current = info.get("proc_start"), _process_start(pid)
    return recorded is None or current is None or recorded == current


def read_lock(path: Path) -> dict | None:
    """The lock's contents; {} for an unreadable/corrupt lock (never executed, only parsed); None if absent."""
    try:
        raw = path.read_bytes()[:4096]
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {when}"


class RunLock:
    """`with RunLock(run_dir): ...` holds the run directory's lock; raises MakemoreError if another process has it.

    After `acquire()`, `took_over` is the description of the stale lock replaced, if any.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.held = False
        self.took_over: str | None = None

    def _info(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "started": time.time(), "proc_start": _process_start(pid)}

    def _try_create(self) -> bool:
        """Place a complete lock file atomically; False if one exists."""
        data = json.dumps(self._info()).encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".lock.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError as error:  # a filesystem without hard links: O_EXCL (a reader may see it half-written)
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                try:
                    out = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(out, "wb") as handle:
                    handle.write(data)
                return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _take_over(self, stale: dict) -> None:
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it first; try again to create ours
        if read_lock(aside) != stale:  # we moved a lock that is not the stale one: give it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def acquire(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for _ in range(20):
                if self._try_create():
                    self.held = True
                    return self
                info = read_lock(self.path)
                if info is None:
                    continue  # released between our two looks
                if info and owner_alive(info):
                    raise MakemoreError(
                        f"{self.run_dir}: in use by another makemore process ({describe(info)}); wait for it to "
                        f"finish or stop it (if it is gone, delete {self.path})"
                    )
                self.took_over = describe(info) if info else "an unreadable lock file"
                self._take_over(info)
        except OSError as error:
            raise MakemoreError(f"{self.run_dir}: cannot lock the run directory ({error.strerror or error})") from None
        raise MakemoreError(f"{self.path}: could not take the lock (other processes keep racing for it)")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        info = read_lock(self.path)
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            # On a filesystem gone read-only the lock stays: it is stale once we exit, and taken over then.
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)

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
        if path.is_file() and not path.name.startswith(LOCK_FILE + "."):  # another process's lock attempt
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed
