"""The machine as this process may use it: the CPU cores (its affinity mask and its cgroup's CPU quota), the
visible GPUs, and TensorFlow imported without its C++ start-up chatter.

bin/train sizes its threads to the quota, bin/sweep its worker slots, the test suite its processes: one
count for all, so they never disagree.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping


def _cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(version, root, mount point) of each cgroup v2 mount and each v1 mount of the cpu controller, from
    /proc/self/mountinfo lines: `id parent major:minor root mount_point options [optional...] - fstype
    source super_options`."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.append(("2", fields[3], fields[4]))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts.append(("1", fields[3], fields[4]))
    return mounts


def _quota(directory: Path, version: str) -> float | None:
    """The CPU bandwidth limit set in one cgroup folder, in CPUs (quota / period); None when unlimited."""
    try:
        if version == "2":
            quota, period = (directory / "cpu.max").read_text().split()[:2]  # "max 100000", "150000 100000"
            return None if quota == "max" else int(quota) / int(period)
        quota = int((directory / "cpu.cfs_quota_us").read_text())         # -1: unlimited
        return None if quota < 0 else quota / int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (e.g. 1.5), or None when there is none.

    Kubernetes' `resources.limits.cpu`, `docker run --cpus` and SLURM's cgroup plugin set it: cgroup v2's
    cpu.max, or v1's cpu.cfs_quota_us / cpu.cfs_period_us. A parent's quota bounds its children, so every
    folder from the process's cgroup up to the mount point is read and the smallest limit wins. `root`
    lets tests stand a fake /proc and /sys in for the real ones.
    """
    try:
        mountinfo = (root / "proc/self/mountinfo").read_text()
        membership = (root / "proc/self/cgroup").read_text()
    except OSError:
        return None
    paths = {}  # version -> the process's cgroup path: "0::/a/b" (v2), "4:cpu,cpuacct:/a/b" (v1)
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
            paths["2"] = parts[2]
        elif len(parts) == 3 and "cpu" in parts[1].split(","):
            paths["1"] = parts[2]
    limits = []
    for version, mount_root, mount_point in _cgroup_mounts(mountinfo):
        if version not in paths:
            continue
        mount = root / mount_point.lstrip("/")
        cgroup = paths[version]
        # In a container the cgroup namespace's root is the mount's root; a path outside it (the host's
        # view) is not visible, so the mount point itself is the nearest folder that is.
        relative = os.path.relpath(cgroup, mount_root) if cgroup.startswith(mount_root) else "."
        folder = mount / relative if (mount / relative).is_dir() else mount
        while True:
            limit = _quota(folder, version)
            if limit is not None:
                limits.append(limit)
            if folder == mount or mount not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def available_cores(root: Path = Path("/")) -> int:
    """CPU cores this process may use, at least 1: its affinity mask (e.g. a SLURM allocation), capped by
    its cgroup's CPU quota rounded down (a pod with `limits.cpu: 8` on a 64-core node gets 8; a thread
    beyond a quota of 1.5 CPUs would be throttled, stalling the others, so it gets 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.floor(limit + 1e-9))
    return max(1, cores)


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs workers may use, as CUDA_VISIBLE_DEVICES entries.

    A CUDA_VISIBLE_DEVICES already set (by SLURM, Kubernetes or the user) is respected, "" or -1 meaning
    none; otherwise `nvidia-smi -L` lists the machine's GPUs (none when it is absent or fails).
    """
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        entries = [e.strip() for e in env["CUDA_VISIBLE_DEVICES"].split(",") if e.strip()]
        return [] if entries[:1] == ["-1"] else entries
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    # Lines read "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"; MIG slices are indented lines below them.
    return [line.split(":", 1)[0].split()[1] for line in out.splitlines() if line.startswith("GPU ")]


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
