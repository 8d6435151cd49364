"""bin/sharpness over several runs in one process (--ckpt lists and globs, --results): the same numbers as one
process per run, one run's failure skipped and reported, only runs without a current sharpness.json."""

from __future__ import annotations

import json
import shutil

import pytest

from lrbs_tf.cli import sharpness as sharpness_cli
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.training.run import run as train_run
from tests.helpers import run_bin, small_config

# Every quantity, on settings small enough for a test. The spectrum and the sharpness measures use random
# streams of their own, so a reused trace or a shared process could only show up as a different number.
FLAGS = ["--num_examples=256", "--top_k=2", "--max_probes=30", "--slq_steps=12", "--slq_runs=1", "--eps_steps=3",
         "--noise_draws=4"]
NOT_NUMBERS = ("seconds", "costs", "checkpoint", "versions")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three finished runs: two of one architecture (seeds 0, 1: one trace shared) and one of another."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed, width in ((0, 8), (1, 8), (0, 12)):
        cfg = small_config(root, mlp_depth=1, mlp_width=width, mlp_batch_norm=True, epochs=1, seed=seed,
                           run_name=f"w{width}-s{seed}")
        assert train_run(cfg)["status"] == "done"
        dirs.append(cfg.resolved().run_dir)
    return dirs


def _copies(runs, dest):
    dest.mkdir()
    return [shutil.copytree(r, dest / r.name) for r in runs]


def _numbers(run_dir):
    record = json.loads((run_dir / runfolder.SHARPNESS).read_text())
    return {k: v for k, v in record.items() if k not in NOT_NUMBERS}


def _main(args, capsys):
    with pytest.raises(SystemExit) as exc:
        sharpness_cli.main(["sharpness", *args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_one_process_gives_the_numbers_of_one_process_per_run(runs, tmp_path):
    together = _copies(runs, tmp_path / "together")
    alone = _copies(runs, tmp_path / "alone")
    proc = run_bin("sharpness", f"--ckpt={','.join(map(str, together))}", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "measured 3 of 3 runs" in proc.stdout
    for run_dir in alone:
        single = run_bin("sharpness", f"--ckpt={run_dir}", *FLAGS)
        assert single.returncode == 0, single.stderr
    for a, b in zip(together, alone):
        numbers = _numbers(a)
        assert numbers["lambda_max"] > 0 and numbers["spectrum"] and numbers["grad_cov_trace"] > 0
        assert numbers == _numbers(b), a.name
    assert _numbers(together[0])["lambda_max"] != _numbers(together[1])["lambda_max"]


def test_a_failing_run_is_reported_and_skipped(runs, tmp_path, capsys):
    good, other = _copies(runs[:2], tmp_path / "runs")
    bad = shutil.copytree(runs[0], tmp_path / "runs" / "diverged")
    result = runfolder.read_json(bad / runfolder.RESULT)
    runfolder.atomic_write_json(bad / runfolder.RESULT, {**result, "status": "diverged", "diverged_epoch": 1})
    code, out, err = _main([f"--ckpt={good},{bad},{other}", *FLAGS[:2], "--quantities=eigenvalues"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"sharpness: error: {bad}: {bad} diverged (epoch 1): its weights are not "
                                        "finite, so it has no curvature to measure"]
    assert (good / runfolder.SHARPNESS).exists() and (other / runfolder.SHARPNESS).exists()
    assert not (bad / runfolder.SHARPNESS).exists()
    assert "measured 2 of 3 runs; 1 failed" in out


def test_results_measures_only_runs_without_a_current_sharpness_json(runs, tmp_path, capsys):
    root = tmp_path / "study"
    dirs = _copies(runs, root)
    unfinished = shutil.copytree(runs[0], root / "unfinished")
    (unfinished / runfolder.RESULT).unlink()
    args = [f"--results={root}", *FLAGS[:2], "--quantities=eigenvalues"]
    code, out, _ = _main(args, capsys)
    assert code == 0 and "3 finished runs to measure, 0 with a current" in out
    assert all((d / runfolder.SHARPNESS).exists() for d in dirs) and not (unfinished / runfolder.SHARPNESS).exists()
    before = [(d / runfolder.SHARPNESS).stat().st_mtime_ns for d in dirs]
    code, out, _ = _main(args, capsys)
    assert code == 0 and "0 finished runs to measure, 3 with a current" in out
    assert [(d / runfolder.SHARPNESS).stat().st_mtime_ns for d in dirs] == before
    code, out, _ = _main([f"--results={root}", "--num_examples=256", "--top_k=1", "--quantities=eigenvalues"],
                         capsys)  # other settings: none is current any more
    assert code == 0 and "3 finished runs to measure, 0 with a current" in out
    assert all(json.loads((d / runfolder.SHARPNESS).read_text())["settings"]["top_k"] == 1 for d in dirs)


@pytest.mark.parametrize("args,needle", [
    (["--ckpt={root}/nothing-*"], "matches no run folder or model file"),
    (["--ckpt={root}/*", "--out={root}/x"], "with several runs each writes into its own run folder"),
    (["--ckpt={root}/w8-s0", "--results={root}"], "give one"),
])
def test_bad_multi_run_input_is_one_line_and_exit_2(runs, tmp_path, capsys, args, needle):
    root = tmp_path / "r"
    _copies(runs, root)
    code, _, err = _main([a.format(root=root) for a in args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err
    assert not list(root.glob(f"*/{runfolder.SHARPNESS}"))
