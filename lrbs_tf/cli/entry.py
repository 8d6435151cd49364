"""Starting a binary from bin/: import its module and call its main(), or say in one line why it cannot.

bin/<name> runs under whichever `python3` is first on PATH. In a new shell that is usually not the
project's virtual environment, and importing lrbs_tf's dependencies would end in a ModuleNotFoundError
traceback. So when a dependency is missing and the checkout has the README's `.venv`, the script is started
again with that environment's Python; otherwise one line names the missing module and the way out.

Standard library only, in syntax old Pythons parse, since it runs under whatever python3 starts it.
"""

import importlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
_REEXEC = "LRBS_TF_REEXEC"  # set on the second start, so a broken .venv cannot loop


def _venv_python():
    for name in ("bin/python", "Scripts/python.exe"):
        if (VENV / name).is_file():
            return VENV / name
    return None


def _in_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == VENV.resolve()
    except OSError:
        return False


def main(module: str, function: str = "main") -> None:
    """Runs `module.function()`; a missing third-party module re-executes in .venv, or is one line, exit 2."""
    try:
        entry = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing in ("", "lrbs_tf"):
            raise
        python = _venv_python()
        if python is not None and not _in_venv() and not os.environ.get(_REEXEC):
            os.environ[_REEXEC] = "1"
            os.execv(str(python), [str(python), sys.argv[0], *sys.argv[1:]])
        name = Path(sys.argv[0]).name
        hint = ("install the project first: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'"
                if python is None else f"{VENV} lacks it too: .venv/bin/pip install -e '.[test]'")
        print(f"{name}: error: {sys.executable} cannot import {missing!r} (a dependency of lrbs_tf); {hint}",
              file=sys.stderr, flush=True)
        sys.exit(2)
    os.environ.pop(_REEXEC, None)  # not inherited by the processes this binary starts
    entry()
