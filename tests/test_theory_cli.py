"""bin/nqm and bin/bound: outputs, the NQM picture end to end, and the one-line error contract.

bin/nqm runs as a subprocess twice (a good and a bad invocation); everything else calls the library
functions behind the flags, so that no absl flag is defined in the test process."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrbs_tf.cli import theory as theory_cli
from lrbs_tf.cli.app import UsageError
from lrbs_tf.runs.folder import RunFolderError
from lrbs_tf.theory import bounds, nqm
from tests.runfolders import config as run_config

pytestmark = pytest.mark.fast  # no TensorFlow: the fast tier (README, Development)

REPO = Path(__file__).resolve().parents[1]
NQM = [sys.executable, str(REPO / "bin" / "nqm")]


def test_bin_nqm_writes_the_table_and_reproduces_the_nqm_picture(tmp_path):
    out = tmp_path / "nqm"
    sizes = [4, 16, 64, 256, 1024, 4096, 16384, 65536]
    proc = subprocess.run(NQM + [f"--batch_sizes={','.join(map(str, sizes))}", "--optimizers=sgd,momentum,precond",
                                 "--nqm_dim=1000", f"--out={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(out / "nqm.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["batch_size", "optimizer", "steps_to_target", "best_lr", "best_momentum"]
    assert list(rows[0]) == list(theory_cli.CSV_COLUMNS)
    assert len(rows) == 3 * len(sizes)
    summary = json.loads((out / "nqm.json").read_text())
    steps = {}
    for name in ("sgd", "momentum", "precond"):
        mine = [r for r in rows if r["optimizer"] == name]
        assert [int(r["batch_size"]) for r in mine] == sizes
        s = np.array([float(r["steps_to_target"]) for r in mine])
        steps[name] = s
        assert np.all(np.diff(s) <= 0), name                      # never slower with a larger batch
        assert s[1] / s[0] == pytest.approx(0.25, rel=0.1), name  # 4x the batch, 4x fewer steps at first
        floor = summary["optimizers"][name]["steps_infinite_batch"]
        assert s[-1] <= 1.1 * floor, name                         # saturated at the largest batch
        assert all(float(r["steps_infinite_batch"]) == floor for r in mine)
        if name == "sgd":
            assert all(float(r["best_momentum"]) == 0.0 for r in mine)
    crit = {name: summary["optimizers"][name]["critical_batch_size"] for name in steps}
    assert crit["momentum"] > 4 * crit["sgd"] and crit["precond"] > 4 * crit["sgd"]
    assert str(out) in proc.stdout and "critical batch size" in proc.stdout
    for ext in ("png", "pdf"):
        assert (out / f"nqm.{ext}").stat().st_size > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_bin_nqm_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run(NQM + ["--batch_sizes=4,-8", f"--out={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "-8" in lines[0] and lines[0].startswith("nqm: error:")
    assert not out.exists()


def _request(tmp_path, **kw):
    args = dict(batch_sizes=["4", "32"], optimizers=["sgd"], momenta=["0", "0.9"], ema_decays=["0", "0.9"],
                precond_power=0.5, dim=100, target_loss=0.01, lr_per_decade=4, max_steps=10 ** 9,
                out=str(tmp_path / "out"))
    args.update(kw)
    return theory_cli.nqm_request(**args)


@pytest.mark.parametrize("kw,fragment", [
    (dict(batch_sizes=[""]), "--batch_sizes is empty"),
    (dict(batch_sizes=["4", "0"]), "0 is not positive"),
    (dict(batch_sizes=["4", "x8"]), "'x8'"),
    (dict(batch_sizes=["4", "4"]), "duplicates"),
    (dict(optimizers=["sgd", "adam"]), "'adam'"),
    (dict(optimizers=[]), "--optimizers is empty"),
    (dict(momenta=["0.9", "1.0"]), "1.0 is outside [0, 1)"),
    (dict(precond_power=1.5), "--precond_power=1.5"),
    (dict(target_loss=50.0), "--target_loss=50.0"),
    (dict(dim=0), "--nqm_dim=0"),
    (dict(out=None), "--out is required"),
])
def test_nqm_request_rejects_bad_values_naming_them(tmp_path, kw, fragment):
    with pytest.raises(UsageError) as err:
        _request(tmp_path, **kw)
    assert fragment in str(err.value)
    assert not (tmp_path / "out").exists()


def test_nqm_request_out_must_be_a_writable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        _request(tmp_path, out=str(blocker))
    with pytest.raises(UsageError, match="cannot be created"):
        _request(tmp_path, out=str(blocker / "sub"))
    req = _request(tmp_path, batch_sizes=None)
    assert req.batch_sizes == nqm.DEFAULT_BATCH_SIZES == tuple(2 ** k for k in range(2, 22))


def _run_folder(tmp_path, **sharp):
    run = tmp_path / "run"
    run.mkdir()
    record = {"num_params": 50_000, "top_eigenvalues": [30.0, 20.0, 10.0], "lambda_max": 30.0, "trace": 900.0,
              "grad_cov_trace": 12.0, "num_examples": 2048, "dataset": "mnist1d", **sharp}
    (run / "sharpness.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps(run_config(arch="mlp", dataset="mnist1d", lr=0.05, batch_size=64)))
    (run / "result.json").write_text(json.dumps({"status": "done", "final_train_accuracy": 0.99,
                                                 "final_test_accuracy": 0.71}))
    return run


def test_bound_cli_reads_the_run_and_writes_its_report(tmp_path):
    run = _run_folder(tmp_path)
    req = theory_cli.bound_request(str(run), None, 0.05, "proportional", None, None, str(tmp_path / "b"))
    assert (req.lr, req.batch_size, req.num_train) == (0.05, 64, 4000)  # N from the dataset's known size
    assert req.measured_gap == pytest.approx(0.28)
    lines = []
    rep = theory_cli.run_bound(req, log=lines.append)
    direct = bounds.theorem2(50_000 * 12.0 / 900.0, 50_000 * math.log(12.0 / 900.0), 50_000, 0.05, 64, 4000, 0.05)
    assert rep["gap_bound"] == pytest.approx(direct.gap, rel=1e-12)
    assert rep["vacuous"] and rep["assumption2"]
    assert rep["lr_times_lambda_max"] == pytest.approx(1.5)
    saved = json.loads((tmp_path / "b" / "bound.json").read_text())
    assert saved["gap_bound"] == pytest.approx(direct.gap) and saved["measured_gap"] == pytest.approx(0.28)
    with open(tmp_path / "b" / "bound_sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    assert len(sweep) >= 61 and {"ratio", "gap", "slope", "assumption2", "vacuous"} <= set(sweep[0])
    assert (tmp_path / "b" / "bound.png").exists() and "vacuous" in lines[0]


def test_bound_cli_bad_inputs(tmp_path):
    run = _run_folder(tmp_path, grad_cov_trace=None)
    req = theory_cli.bound_request(str(run / "sharpness.json"), 1000, 0.05, "proportional", None, None, None)
    with pytest.raises(UsageError, match="grad_cov_trace"):
        theory_cli.run_bound(req, log=lambda s: None)
    with pytest.raises(UsageError, match="--delta"):
        theory_cli.bound_request(str(run), 100, 1.5, "proportional", None, None, None)
    with pytest.raises(RunFolderError, match="does not exist"):
        theory_cli.bound_request(str(tmp_path / "nowhere"), 100, 0.05, "proportional", None, None, None)
    (run / "config.json").write_text(json.dumps(run_config(arch="mlp", dataset="npz", lr=0.1, batch_size=8)))
    (run / "sharpness.json").write_text(json.dumps({"num_params": 10, "dataset": "npz"}))
    with pytest.raises(UsageError, match="'npz' is unknown: pass --num_train"):
        theory_cli.bound_request(str(run), None, 0.05, "proportional", None, None, None)
    with pytest.raises(UsageError, match="pass --bound_lr"):
        theory_cli.bound_request(str(run), 100, 0.05, "proportional", -1.0, None, None)


def test_bound_reads_the_training_set_size_the_run_recorded(tmp_path):
    """An npz run has no known size; its config.json's num_train is what N must be."""
    import json

    from lrbs_tf.cli.theory import bound_request

    (tmp_path / "config.json").write_text(json.dumps(run_config(arch="mlp", dataset="npz", lr=0.1, batch_size=32,
                                                                num_train=1234)))
    (tmp_path / "sharpness.json").write_text(json.dumps({"lambda_max": 1.0, "top_eigenvalues": [1.0],
                                                         "trace": 2.0, "grad_cov_trace": 3.0}))
    req = bound_request(str(tmp_path), None, 0.05, "isotropic", None, None, None)
    assert req.num_train == 1234 and req.lr == 0.1 and req.batch_size == 32
