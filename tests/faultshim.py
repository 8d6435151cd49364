"""A full disk, simulated at the write calls, for fault tests: in-process (`DiskFull` as a context manager)
or around a binary (`python tests/faultshim.py bin/<name> ARGS...`, configured by the environment).

From the n-th write call to a file under `root` whose name contains `pattern` on, the disk is full: that
call writes half of its bytes and fails with ENOSPC, as a real write(2) on a filling disk does, and every
later write under `root` fails at once. Pattern "ckpt" counts TensorFlow checkpoint saves instead (written
by TensorFlow's C++ code, which no Python patch reaches, so the save is refused as TensorFlow refuses it:
ResourceExhaustedError "No space left on device", leaving its empty `_temp` folder). Writes outside `root`
are untouched.

Patched: os.write, and io.open / builtins.open (so os.fdopen, pathlib and zipfile, hence Keras' model.keras,
matplotlib's figures and every lrbs_tf writer) return files whose write() is checked. Not reachable:
TensorBoard's event files (C++), which the fault tests leave out of their comparisons.

`DiskFull.snapshot` holds every file under `root` (bytes) at the moment the disk filled, so a test can show
that nothing written before the fault changed.

Environment for the wrapper: LRBS_FAULT_ROOT (the folder), LRBS_FAULT_AT (`pattern:n`), LRBS_FAULT_TF=1 to
import TensorFlow first (quietly, as bin/train would) and refuse checkpoint saves too.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import runpy
import sys
from pathlib import Path

_real_open = io.open
_real_write = os.write


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class _CheckedFile:
    """A writable file object whose write() asks the DiskFull first; everything else is the file's own."""

    def __init__(self, inner, path: str, disk: "DiskFull") -> None:
        self._inner, self._path, self._disk = inner, path, disk

    def write(self, data):
        allowed = self._disk.allowed(self._path, len(data))
        if allowed is None:
            return self._inner.write(data)
        if allowed:
            self._inner.write(data[:allowed])
            self._inner.flush()
        raise _enospc()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._inner.close()

    def __iter__(self):
        return iter(self._inner)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class DiskFull:
    """The disk under `root` fills at the `n`-th write to a file whose name contains `pattern` (see module)."""

    def __init__(self, root: str | os.PathLike, pattern: str, n: int = 1) -> None:
        self.root = os.path.realpath(root)
        self.pattern, self.n = pattern, n
        self.count = 0
        self.full = False
        self.snapshot: dict[str, bytes] | None = None
        self._saved: list[tuple[object, str, object]] = []

    # -- the decision ------------------------------------------------------------------------------------
    def _under_root(self, path: str | None) -> bool:
        return path is not None and os.path.realpath(path).startswith(self.root + os.sep)

    def _fill(self) -> None:
        self.full = True
        self.snapshot = {str(p): p.read_bytes() for p in Path(self.root).rglob("*") if p.is_file()}

    def allowed(self, path: str | None, size: int) -> int | None:
        """How many of `size` bytes a write to `path` puts on disk before ENOSPC; None: all, no fault."""
        if not self._under_root(path):
            return None
        if self.full:
            return 0
        if self.pattern != "ckpt" and self.pattern in os.path.basename(path):
            self.count += 1
            if self.count == self.n:
                self._fill()
                return size // 2
        return None

    def checkpoint_refused(self, prefix: str) -> bool:
        if not self._under_root(prefix):
            return False
        if not self.full and self.pattern == "ckpt":
            self.count += 1
            if self.count == self.n:
                self._fill()
        return self.full

    # -- the patches -------------------------------------------------------------------------------------
    def _open(self, file, mode="r", *args, **kwargs):
        f = _real_open(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        path = _fd_path(file) if isinstance(file, int) else os.fspath(file)
        return _CheckedFile(f, path, self) if self._under_root(path) else f

    def _write(self, fd: int, data) -> int:
        allowed = self.allowed(_fd_path(fd), len(data))
        if allowed is None:
            return _real_write(fd, data)
        if allowed:
            _real_write(fd, bytes(data)[:allowed])
        raise _enospc()

    def _patch(self, owner, name: str, value) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def patch_checkpoints(self) -> None:
        """Refuses TensorFlow checkpoint saves under `root` once the disk is full (TensorFlow imported)."""
        import tensorflow as tf
        from tensorflow.python.checkpoint import checkpoint as tf_checkpoint

        real = tf_checkpoint.Checkpoint._write
        disk = self

        def write(ckpt, file_prefix, *args, **kwargs):
            prefix = os.fspath(file_prefix)
            if disk.checkpoint_refused(prefix):
                os.makedirs(f"{prefix}_temp", exist_ok=True)
                raise tf.errors.ResourceExhaustedError(
                    None, None, f"{prefix}_temp/part-00000-of-00001.data-00000-of-00001.tempstate; "
                                "No space left on device [Op:SaveV2]")
            return real(ckpt, file_prefix, *args, **kwargs)

        self._patch(tf_checkpoint.Checkpoint, "_write", write)

    def __enter__(self) -> "DiskFull":
        self._patch(io, "open", self._open)
        self._patch(builtins, "open", self._open)
        self._patch(os, "write", self._write)
        if "tensorflow" in sys.modules:
            self.patch_checkpoints()
        return self

    def __exit__(self, *exc) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)


def main(argv: list[str]) -> None:
    """Runs the binary argv[0] with argv[1:] as its command line, on a disk that fills as the environment
    says (module docstring)."""
    pattern, n = os.environ["LRBS_FAULT_AT"].rsplit(":", 1)
    disk = DiskFull(os.environ["LRBS_FAULT_ROOT"], pattern, int(n))
    if os.environ.get("LRBS_FAULT_TF") == "1":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from lrbs_tf.core.resources import quiet_import_tensorflow

        quiet_import_tensorflow()
    disk.__enter__()
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
