"""lrbs_tf.core.resources: the cores this process may use (affinity mask and cgroup CPU quota), the visible
GPUs, and bin/train's threads sized to a quota."""

from __future__ import annotations

import pytest

from lrbs_tf.core import resources

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

MOUNTINFO_V2 = ("24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
                "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
                "rw,nsdelegate,memory_recursiveprot\n")
MOUNTINFO_V1 = ("31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
                "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup "
                "cgroup rw,cpu,cpuacct\n"
                "35 31 0:32 {root} /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup "
                "rw,memory\n")


@pytest.mark.parametrize("value, expected", [("", []), ("-1", []), ("2,3", ["2", "3"]),
                                             ("GPU-ab12", ["GPU-ab12"])])
def test_visible_gpus_respects_an_allocation(value, expected):
    assert resources.visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == expected


def fake_cgroup(tmp_path, mountinfo: str, membership: str, files: dict[str, str]):
    """A /proc/self and /sys/fs/cgroup tree in the kernel's formats under tmp_path."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    (tmp_path / "proc/self/cgroup").write_text(membership)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


@pytest.mark.parametrize("mountinfo, membership, files, limit", [
    # cgroup v2 in a container (its own namespace: the process's cgroup is the mount's root), `--cpus=2`.
    (MOUNTINFO_V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "200000 100000\n"}, 2.0),
    (MOUNTINFO_V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
    # v2 seen from the host (systemd): a Kubernetes pod's 1.5 CPUs set on the pod, none on the container.
    (MOUNTINFO_V2, "0::/kubepods.slice/kubepods-pod1.slice/cri-abc.scope\n",
     {"sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cpu.max": "150000 100000\n",
      "sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-abc.scope/cpu.max": "max 100000\n",
      "sys/fs/cgroup/kubepods.slice/cpu.max": "max 100000\n"}, 1.5),
    # ... and the smallest of nested limits wins.
    (MOUNTINFO_V2, "0::/a/b\n", {"sys/fs/cgroup/a/cpu.max": "300000 100000\n",
                                  "sys/fs/cgroup/a/b/cpu.max": "400000 100000\n"}, 3.0),
    # A path of the host's view that the container cannot see: the mount point is the nearest folder.
    (MOUNTINFO_V2, "0::/user.slice/gone.scope\n", {"sys/fs/cgroup/cpu.max": "50000 100000\n"}, 0.5),
    # cgroup v1 (docker): the cpu controller's CFS quota; -1 is unlimited.
    (MOUNTINFO_V1.format(root="/docker/0123"), "12:memory:/docker/0123\n4:cpu,cpuacct:/docker/0123\n",
     {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
    (MOUNTINFO_V1.format(root="/"), "4:cpu,cpuacct:/slurm/uid_1/job_7\n",
     {"sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_quota_us": "-1\n",
      "sys/fs/cgroup/cpu,cpuacct/slurm/uid_1/job_7/cpu.cfs_period_us": "100000\n",
      "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_quota_us": "400000\n",
      "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_period_us": "100000\n"}, 4.0),
    (MOUNTINFO_V1.format(root="/"), "4:cpu,cpuacct:/\n", {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                                          "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     None),
])
def test_the_cgroup_cpu_quota_is_read_from_the_kernels_files(tmp_path, mountinfo, membership, files, limit):
    root = fake_cgroup(tmp_path, mountinfo, membership, files)
    assert resources.cgroup_cpu_limit(root) == limit
    import os

    affinity = len(os.sched_getaffinity(0))
    expected = affinity if limit is None else max(1, min(affinity, int(limit)))
    assert resources.available_cores(root) == expected


def test_a_quota_caps_the_cores_below_the_affinity_mask(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a 64-core node
    root = fake_cgroup(tmp_path, MOUNTINFO_V2, "0::/\n", {"sys/fs/cgroup/cpu.max": "800000 100000\n"})
    assert resources.available_cores(root) == 8  # the pod's limits.cpu: 8, not the node's 64
    (root / "sys/fs/cgroup/cpu.max").write_text("150000 100000\n")
    assert resources.available_cores(root) == 1  # 1.5 CPUs: a second thread would be throttled
    (root / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    assert resources.available_cores(root) == 64
    assert resources.available_cores(tmp_path / "no-proc-here") == 64  # nothing readable: affinity alone
