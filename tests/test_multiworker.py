"""One run across two hosts: MultiWorkerMirroredStrategy through TF_CONFIG, two workers on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import pytest

from lrbs_tf.runs import folder as runfolder
from lrbs_tf.training.run import run
from tests.helpers import REPO, small_config


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path):
    args = ["--arch=mlp", "--mlp_depth=2", "--mlp_width=32", "--dataset=mnist1d", "--batch_size=64",
            "--lr=0.1", "--epochs=2", "--progress=false", f"--workdir={tmp_path / 'multi'}"]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "bin" / "train"), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]

    name = "mlp-mnist1d-bs64-lr0.1-s0"
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == [name]  # only the chief wrote
    config = runfolder.read_config(tmp_path / "multi" / name).raw
    assert config["replicas"] == 2

    run(small_config(tmp_path / "single"))
    multi = runfolder.read_metrics(tmp_path / "multi" / name)
    single = runfolder.read_metrics(tmp_path / "single" / name)
    assert len(multi) == len(single) == 2
    for a, b in zip(multi, single):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm_sq"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (a["epoch"], key)
    assert runfolder.read_result(tmp_path / "multi" / name).status == "done"
