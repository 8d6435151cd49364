"""Provenance recorded beside every result: library versions, the lrbs_tf checkout's git commit, the device,
when and by which command. One place, so config.json, sharpness.json and the theory binaries' files
describe their origin the same way."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Python's version and each package's (by import name; a package that is not installed is left out).

    An imported module's own `__version__` is preferred (it is what ran); otherwise the installed
    distribution's metadata, so recording a version never imports a heavy package.
    """
    out = {"python": platform.python_version()}
    for name in packages:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None:
            try:
                version = importlib.metadata.version(name.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                continue
        out[name] = str(version)
    return out


def git_commit() -> str | None:
    """The commit of the lrbs_tf checkout this code runs from (+ '-dirty' with uncommitted changes to tracked
    files), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + "-dirty" if commit and dirty else commit


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record(packages: Sequence[str]) -> dict:
    """versions, git_commit, created (UTC) and command: the provenance keys of config.json."""
    return {"versions": versions(packages), "git_commit": git_commit(), "created": now(),
            "command": " ".join(sys.argv)}


def device() -> str:
    """The accelerator TensorFlow computes on: the first GPU's name, else 'CPU (<processor>)'."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"CPU ({platform.processor() or platform.machine()})"
