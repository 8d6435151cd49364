"""bin/sharpness on real run folders from bin/train (tiny BN MLP on MNIST-1D): sharpness.json against a dense
float64 Hessian, the model-file form, interpolation endpoints, and bad input (one line, exit 2, nothing
written). Two subprocess runs (one success, one bad input); everything else in-process."""

import csv
import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from lrbs_tf.cli import sharpness as sharpness_cli
from lrbs_tf.curvature import session as sharpness_bin
from lrbs_tf.data.loaders import load_data
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.training.run import run as train_run
from tests import curvature_oracles as oracles
from tests.helpers import run_bin, small_config

NUM_PARAMS = 40 * 8 + 8 + 2 * 8 + 8 * 10 + 10  # Dense, BN (gamma, beta), Dense = 434
WRITTEN = (runfolder.SHARPNESS, "hessian_spectrum.png", "hessian_spectrum.pdf")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (0, 1):
        cfg = small_config(root, mlp_depth=1, mlp_width=8, mlp_batch_norm=True, epochs=1, seed=seed)
        assert train_run(cfg)["status"] == "done"
        dirs.append(cfg.resolved().run_dir)
    assert runfolder.read_config(dirs[0]).num_params == NUM_PARAMS
    return dirs


def _examples(n, split="train"):
    data = load_data("mnist1d")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return data.normalize(x[:n]), y[:n].astype(np.int32)


def _load(run_dir):
    return keras.models.load_model(run_dir / runfolder.MODEL, compile=False)


def test_sharpness_json_agrees_with_a_dense_hessian(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir)
    model_bytes = (run_dir / runfolder.MODEL).read_bytes()
    settings = sharpness_bin.Settings(num_examples=128, top_k=3, max_probes=200, hutchinson_rtol=0.01,
                                      slq_steps=30, slq_runs=1, eps_steps=5, noise_draws=4)
    record = sharpness_bin.run(str(run_dir), settings, log=lambda *_: None)
    assert json.loads((run_dir / runfolder.SHARPNESS).read_text()) == json.loads(runfolder.dumps(record))
    for name in WRITTEN:
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / runfolder.MODEL).read_bytes() == model_bytes

    x, y = _examples(128)
    loss, _, h = oracles.mlp_dense_hessian(_load(run_dir), x, y)
    truth = np.linalg.eigvalsh(h)[::-1]
    assert record["num_examples"] == 128 and record["num_params"] == NUM_PARAMS
    assert record["train_loss"] == pytest.approx(loss, rel=1e-5)
    assert record["lambda_max"] == pytest.approx(truth[0], rel=1e-4)
    np.testing.assert_allclose(record["top_eigenvalues"], truth[:3], rtol=1e-4)
    assert abs(record["trace"] - np.trace(h)) <= 3 * record["trace_stderr"]
    assert record["frobenius_norm"] == pytest.approx(np.linalg.norm(h), rel=0.05)
    g = oracles.mlp_per_example_grads(_load(run_dir), x, y)
    assert record["grad_cov_trace"] == pytest.approx(np.mean(np.sum((g - g.mean(0)) ** 2, axis=1)), rel=1e-4)
    assert record["grad_norm"] == pytest.approx(np.linalg.norm(g.mean(0)), rel=1e-4)
    # B_simple = tr(C) / |G|^2, both unbiased, from the same per-example gradients.
    s = np.sum((g - g.mean(0)) ** 2) / (len(g) - 1)
    u = g.mean(0) @ g.mean(0) - s / len(g)
    assert record["noise_scale_cov_trace"] == pytest.approx(s, rel=1e-4)
    assert record["noise_scale_grad_sq"] == pytest.approx(u, rel=1e-3, abs=1e-3 * s / len(g))
    if u > 0:
        assert record["noise_scale"] == pytest.approx(s / u, rel=1e-3)
    assert record["costs"]["noise_scale"]["shared_with"] == "grad_cov"
    assert record["stability_ratio"] == pytest.approx(record["lambda_max"] * 0.1 / 2, rel=1e-12)
    assert record["eps_sharpness"] > 0 and record["eps_sharpness_perturbed_loss"] > loss
    assert record["avg_sharpness_stderr"] > 0
    spectrum = record["spectrum"]
    assert sum(spectrum["weights"][0]) == pytest.approx(1.0, abs=1e-9)
    assert max(spectrum["nodes"][0]) == pytest.approx(truth[0], rel=1e-4)  # 30 steps find the extreme
    assert record["num_hvps"] == sum(c["hvps"] for c in record["costs"].values())
    assert record["settings"]["bn_mode"] == "inference" and record["settings"]["hvp_batch_size"] == 256
    assert record["settings"]["seed"] == 0 and record["settings"]["top_k"] == 3
    assert record["run_config"]["lr"] == 0.1 and record["versions"]["tensorflow"]

    # A bare model.keras with --dataset measures the same thing (written next to the file).
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / runfolder.MODEL, bare / "model.keras")
    one = sharpness_bin.Settings(num_examples=128, top_k=3, quantities=("eigenvalues",))
    again = sharpness_bin.run(str(bare / "model.keras"), one, dataset="mnist1d", log=lambda *_: None)
    assert again["top_eigenvalues"] == record["top_eigenvalues"]  # same seed, same start vector
    assert again["trace"] is None and again["run_config"] is None
    assert (bare / runfolder.SHARPNESS).exists() and not (bare / "hessian_spectrum.png").exists()

    # Batch-statistics BN: chunks default to the run's training batch size, and H is a different matrix.
    batch = sharpness_bin.run(str(run_dir), dataclasses.replace(one, bn_mode="batch"), log=lambda *_: None)
    assert batch["settings"]["hvp_batch_size"] == 64 and batch["settings"]["bn_mode"] == "batch"
    assert abs(batch["lambda_max"] - record["lambda_max"]) > 1e-3 * record["lambda_max"]


def _bad_cases(runs, tmp_path):
    """(name, argv tail, folder that must stay untouched) for every kind of bad input."""
    def copy(name, edit=None, drop=()):
        d = tmp_path / name
        shutil.copytree(runs[0], d)
        for f in drop:
            (d / f).unlink()
        if edit:
            edit(d)
        return d

    def set_config(key, value):
        def edit(d):
            cfg = runfolder.read_json(d / runfolder.CONFIG)
            cfg[key] = value
            runfolder.atomic_write_json(d / runfolder.CONFIG, cfg)
        return edit

    def set_status(status):
        def edit(d):
            result = runfolder.read_json(d / runfolder.RESULT)
            result["status"] = status
            runfolder.atomic_write_json(d / runfolder.RESULT, result)
        return edit

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs[0] / runfolder.MODEL, bare / "model.keras")
    ok = copy("ok")
    return [
        ("missing", [f"--ckpt={tmp_path / 'nope'}"], tmp_path, "no such run folder"),
        ("unfinished", [f"--ckpt={copy('unfinished', drop=[runfolder.RESULT])}"], None, "unfinished"),
        ("diverged", [f"--ckpt={copy('diverged', set_status('diverged'))}"], None, "not finite"),
        ("params", [f"--ckpt={copy('params', set_config('num_params', 999))}"], None, "num_params=999"),
        ("arch", [f"--ckpt={copy('arch', set_config('arch', 'resnet20'))}"], None, "arch='resnet20'"),
        ("top_k", [f"--ckpt={ok}", f"--top_k={NUM_PARAMS + 1}"], ok, f"--top_k={NUM_PARAMS + 1}"),
        ("quantities", [f"--ckpt={ok}", "--quantities=trace,bogus"], ok, "bogus"),
        ("no dataset", [f"--ckpt={bare / 'model.keras'}"], bare, "--dataset"),
        ("too many", [f"--ckpt={ok}", "--num_examples=5000"], ok, "--num_examples=5000"),
        ("interp", [f"--interpolate={ok}"], ok, "exactly two"),
        ("interp out", [f"--interpolate={ok},{runs[1]}"], ok, "--out"),
        ("both", [f"--ckpt={ok}", f"--interpolate={ok},{runs[1]}", f"--out={ok}"], ok, "give one"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys):
    for name, args, folder, needle in _bad_cases(runs, tmp_path):
        with pytest.raises(SystemExit) as exc:
            sharpness_cli.main(["sharpness", *args])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, name
        assert len(err.splitlines()) == 1 and err.startswith("sharpness: error:") and needle in err, (name, err)
        folder = folder or tmp_path / name
        if folder.exists():
            assert not any((folder / w).exists() for w in WRITTEN), name


def test_a_run_folders_recorded_data_location_can_be_overridden(runs):
    recorded = sharpness_bin.resolve_target(str(runs[0]))
    assert (recorded.dataset, recorded.data_dir, recorded.data_path) == ("mnist1d", None, None)
    moved = sharpness_bin.resolve_target(str(runs[0]), dataset="mnist1d", data_dir="/elsewhere/tfds",
                                         data_path="/elsewhere/x.npz")
    assert (moved.dataset, moved.data_dir, moved.data_path) == ("mnist1d", "/elsewhere/tfds", "/elsewhere/x.npz")
    with pytest.raises(sharpness_bin.UsageError, match="--dataset=cifar10 but .* was trained on mnist1d"):
        sharpness_bin.resolve_target(str(runs[0]), dataset="cifar10")


def test_interpolation_endpoints_reproduce_each_run(runs, tmp_path, capsys):
    out = tmp_path / "line"
    with pytest.raises(SystemExit) as exc:
        sharpness_cli.main([
            "sharpness", f"--interpolate={runs[0]},{runs[1]}", f"--out={out}", "--alpha_range=-0.5,1.5,5",
            "--num_examples=300"])
    assert exc.value.code == 0, capsys.readouterr().err
    with open(out / "interpolation.csv", newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert [r["alpha"] for r in rows] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert (out / "interpolation.png").exists() and (out / "interpolation.pdf").exists()
    meta = json.loads((out / "interpolation.json").read_text())
    assert meta["num_train_examples"] == 300 and meta["num_test_examples"] == 300
    for alpha, run_dir in ((0.0, runs[0]), (1.0, runs[1])):
        row = next(r for r in rows if r["alpha"] == alpha)
        model = _load(run_dir)
        for split in ("train", "test"):
            x, y = _examples(300, split)
            logits = model(x, training=False)
            loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
            assert row[f"{split}_loss"] == pytest.approx(loss, rel=1e-5)
            assert row[f"{split}_accuracy"] == np.mean(np.argmax(logits, axis=1) == y)


def test_binary_subprocess_success_and_bad_input(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir)
    bad = run_bin("sharpness", f"--ckpt={run_dir}", "--top_k=100000")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"sharpness: error: --top_k=100000 is more than the model's {NUM_PARAMS} parameters"]
    assert not any((run_dir / w).exists() for w in WRITTEN)

    ok = run_bin("sharpness", f"--ckpt={run_dir}", "--num_examples=100", "--quantities=eigenvalues,trace",
                 "--top_k=2", "--max_probes=20", "--hvp_mode=reverse_over_reverse")
    assert ok.returncode == 0, ok.stderr
    record = json.loads((run_dir / runfolder.SHARPNESS).read_text())
    x, y = _examples(100)
    _, _, h = oracles.mlp_dense_hessian(_load(run_dir), x, y)
    np.testing.assert_allclose(record["top_eigenvalues"], np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-4)
    assert record["trace_num_probes"] <= 20 and record["spectrum"] is None and record["eps_sharpness"] is None
    assert record["settings"]["hvp_mode"] == "reverse_over_reverse"
    assert record["num_hvps"] == record["costs"]["eigenvalues"]["hvps"] + record["trace_num_probes"]
