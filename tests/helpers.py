"""Small shared pieces for the training tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_bin(name: str, *args: str, cwd: str | os.PathLike | None = None, timeout: int = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs bin/<name> with the test interpreter, capturing text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "bin" / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows]
