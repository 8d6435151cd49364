"""What every binary shares: flag parsing and the one-line error contract.

Bad input (flags, files, folders) ends a binary with one line on stderr, `<prog>: error: <what>`, and exit
status 2; never a traceback. Library code raises `UsageError` (or `RunFolderError`) with the offending
values in the message; `run_app` turns it into that line. A storage fault (a full disk: an OSError whose
errno is in durable.STORAGE_FAULTS) is one such line too, with exit status 1.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import app, flags

from lrbs_tf.durable import STORAGE_FAULTS
from lrbs_tf.errors import RunFolderError, UsageError


def quiet_import_tensorflow() -> None:
    """Imports TensorFlow with its C++ start-up chatter (CUDA probing, absl log init) kept off stderr.

    A binary's stderr then carries only what lrbs_tf says, so bad input stays one line. Python-level import
    errors are unaffected: they are raised after stderr is restored.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.config.list_physical_devices()  # CUDA probing logs here on machines without a GPU
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run_app(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """Parses absl flags (flagfiles included) and runs `main(argv)`, mapping bad input to one line.

    Unlike absl.app.run, a flag error is one line (no usage dump) and exit status 2.
    """
    argv = list(sys.argv if argv is None else argv)
    prog = os.path.basename(argv[0]) if argv else "lrbs_tf"
    if "helpfull" not in flags.FLAGS:
        app.define_help_flags()  # --help, --helpshort, --helpfull: print the flags and exit, as absl.app does
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(prog, str(e).splitlines()[0] if str(e) else repr(e))
    if len(rest) > 1:
        fail(prog, f"unexpected arguments {rest[1:]} (flags are written --name=value)")
    try:
        code = main(rest)
    except (UsageError, RunFolderError) as e:
        fail(prog, str(e))
    except OSError as e:
        if e.errno not in STORAGE_FAULTS:
            raise
        # Not bad input (exit 1, not 2: a sweep goes on with its other runs); the writers are atomic, so
        # every file finished before the fault is intact, and running the command again completes the work.
        fail(prog, f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror), code=1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(int(code or 0))
