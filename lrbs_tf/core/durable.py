"""Durable writes: files that are either the old version or the whole new one, after a kill, a crash, a
power cut or a full disk.

Two primitives serve every finished file and every log of lrbs_tf:

- `atomic_write_text` (and `replace_durably` for files another library wrote, such as model.keras): the
  new bytes go to a temporary file in the target folder, are synced (fsync), renamed over the target
  (os.replace), and then the folder is synced. Without the file sync a crash can leave a renamed file
  whose blocks were never written (zeros or nothing); without the folder sync the rename itself can be
  lost, so a reader finds the old file, or no file, beside a newer one that depends on it.
- `append_line`: one line appended whole or not at all (a failed write is cut back; a tail cut short by an
  earlier crash is dropped before the next line), then synced. Readers never take a last line without its
  newline for data (runfolder.read_metrics).

No TensorFlow, no lrbs_tf imports: any module may use it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# errno values of storage faults: no space or quota left, a file too large, a read-only or failing disk.
STORAGE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes the entries of folder `path` durable: a file created, replaced or renamed there survives a crash
    or power cut only once its folder is synced, whatever was synced inside the file itself."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync a folder say so
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flushes a file written by someone else (Keras, TensorFlow) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Moves the finished file `tmp` to `path` (same folder) so that a crash at any moment leaves either the
    old `path` or the whole new one: `tmp`'s bytes are synced before the rename, the folder after it."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def named(error: OSError, path: str | os.PathLike) -> OSError:
    """The same error with the file it concerns (a failed write() names none), for a one-line message."""
    if error.filename is None and error.errno is not None:
        return OSError(error.errno, error.strerror, str(path))
    return error


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder and os.replace, durably.

    Readers see either the old file or the complete new one, never a partial write, and after a crash or
    power cut the file is one or the other too (the data is synced before the rename, the folder after).
    A failed write (a full disk) leaves `path` as it was, removes the temporary file and raises OSError
    naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise named(e, path) from None
        raise
    fsync_dir(path.parent)


def _whole_lines_length(fd: int, size: int) -> int:
    """The length of the file's whole lines: `size`, or less when a crash cut its last line short."""
    end = size
    while end > 0:
        start = max(0, end - 4096)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def append_line(path: str | os.PathLike, line: str, sync: bool = True) -> None:
    """Appends `line` (without its newline) and a newline to `path`, whole or not at all, synced to disk
    unless `sync` is False (then the caller syncs it, e.g. bin/train before the checkpoint that covers it:
    an fsync per line is a visible share of a short epoch; benchmarks/sweep.md).

    A last line cut short by an earlier crash (a torn tail) is dropped first, so the new line starts a line
    of its own instead of being glued to a fragment. When the write fails part-way (a full disk), the file
    is cut back to its length before the append and the error raised, naming `path`: the file never ends
    in part of the line this call wrote. One writer per file (bin/train its metrics.jsonl, a sweep shard its
    failures file): the torn-tail rule would cut another writer's line in progress.
    """
    path = Path(path)
    data = (line + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)  # read: to find a torn tail
    try:
        size = os.fstat(fd).st_size
        whole = _whole_lines_length(fd, size)
        if whole != size:
            os.ftruncate(fd, whole)
        try:
            written = 0
            while written < len(data):  # os.write may write part of the bytes (a full disk, a signal)
                written += os.write(fd, data[written:])
            if sync:
                os.fsync(fd)
        except BaseException as e:
            try:
                os.ftruncate(fd, whole)
                os.fsync(fd)
            except OSError:
                pass  # the same fault again: readers drop the torn tail, and so does the next append
            if isinstance(e, OSError):
                raise named(e, path) from None
            raise
    finally:
        os.close(fd)
    if whole == 0:  # the file may be new: its folder entry must be durable too
        fsync_dir(path.parent)
