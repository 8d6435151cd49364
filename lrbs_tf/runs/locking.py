"""One writer per run folder: an OS advisory lock on `<run>/.lock`, held for as long as a process writes it.

bin/train holds it on each run folder it trains (every member of a learning-rate column), from before it
reads the folder's state until it has written result.json; bin/sharpness holds it while it writes its files
into a run folder. A second process asking for it gets `RunLocked` at once, naming the folder and the
holder (pid, host and program, which the holder writes into the lock file after it has the lock); bin/*
report that as one line and exit status LOCKED_EXIT, and bin/sweep counts such a run as running elsewhere.

The lock is `flock(LOCK_EX | LOCK_NB)` on an open file: the kernel drops it when its holder exits or is
killed (SIGKILL, OOM, a node's power cut ends the process and its locks), so no stale lock is ever left
behind and nothing is ever cleaned up; the lock file stays in the folder (deleting it would let two
processes lock two different files). Readers (`holder`, through which load_runs, bin/correlate and the run
table list a folder as `running`) never create the file and hold a shared lock only for the microseconds
of a probe; a writer that finds the lock taken tries again for PROBE_GRACE_SECONDS before it gives up, so
a reader's probe can never turn a writer away. A probe from the writer's own process sees the folder
locked too (flock locks belong to open files, not processes).

Known limit: on NFS, Linux emulates flock with a whole-file POSIX lock held by the client; it still
excludes other hosts, but a process that opens and closes the lock file while it holds the lock loses it.
No TensorFlow, no absl: every reader may import it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from lrbs_tf.core.errors import LOCKED_EXIT, RunLocked  # noqa: F401  (re-exported: what a caller of `hold` catches)

LOCK_FILE = ".lock"
# How long a writer keeps trying when the lock is taken, so that a reader's probe (a shared lock held for
# microseconds) is never mistaken for another writer; a real holder keeps it for the whole run.
PROBE_GRACE_SECONDS = 0.5


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK_FILE


def _holder_text(fd: int) -> str:
    """'pid 123 on host h (bin/train)' from the lock file's content, or 'a process whose pid was not recorded
    yet' (the holder writes it right after locking)."""
    try:
        raw = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        raw = []
    if len(raw) >= 2 and raw[0].isdigit():
        what = f" ({' '.join(raw[2:])})" if len(raw) > 2 else ""
        return f"pid {raw[0]} on host {raw[1]}{what}"
    return "a process that has not recorded its pid yet"


def holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds `run_dir`'s lock ('pid 123 on host h (bin/train)'), or None when nobody does. Creates
    nothing; a folder that cannot be probed (no lock file, no permission) counts as not locked."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _holder_text(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_locked(run_dir: str | os.PathLike) -> bool:
    return holder(run_dir) is not None


class RunLock:
    """The exclusive lock of one run folder, as a context manager (`with RunLock(run_dir, "bin/train"):`).

    Acquiring creates the folder (and its parents) when needed, then `.lock` in it; raises RunLocked when
    another open file holds it, without writing anything, and OSError when the folder cannot be created or
    the lock file opened (a --workdir that is a file, under /proc, a read-only disk...).
    """

    def __init__(self, run_dir: str | os.PathLike, program: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.program = program or Path(sys.argv[0]).name or "python"
        self.fd: int | None = None
        self.created: Path | None = None

    def acquire(self) -> "RunLock":
        if self.fd is not None:
            return self
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.created = missing[-1] if missing else None  # the top folder this call made, if any
        while True:
            fd = self._lock_file()
            # The file may have been removed by its last holder (`release(discard=True)`) between our open
            # and our lock: then we hold a lock nobody else can see, and must lock the file now there.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path(self.run_dir)).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:  # who holds it, for the second process's message; the lock itself does not depend on it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {self.program}\n".encode(), 0)
        except OSError:
            pass
        return self

    def _lock_file(self) -> int:
        """An open descriptor of the lock file, locked; RunLocked when another holds it past the grace."""
        fd = os.open(lock_path(self.run_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        deadline = time.monotonic() + PROBE_GRACE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    who = _holder_text(fd)
                    os.close(fd)
                    raise RunLocked(f"{self.run_dir} is being written by another process ({who}); nothing was "
                                    "changed. It is released when that process ends; run the command again "
                                    "then") from None
                time.sleep(0.02)

    def release(self, discard: bool = False) -> None:
        """Drops the lock. `discard`: when nothing but the lock file is in the folder (the holder was refused
        bad input, or interrupted, before it wrote anything), the lock file and the folders `acquire`
        created go too, so a refused command leaves no trace; other processes waiting on the removed file
        notice and lock the new one (see acquire)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if discard and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
                lock_path(self.run_dir).unlink()
                if self.created is not None:
                    for folder in (self.run_dir, *self.run_dir.parents):
                        folder.rmdir()  # each empty, up to the first one acquire made
                        if folder == self.created:
                            break
        except OSError:
            pass  # another process wrote there meanwhile: its files stay
        finally:
            os.close(fd)  # closing the last descriptor of the open file drops the lock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release(discard=True)
