"""No traceback from any path or value (issue 22, cases 8 and 9, and the float flags): bin/correlate, bin/nqm,
bin/bound and bin/sharpness answer bad input with one line and exit status 2."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_bin
from tests.runfolders import write_grid


def one_line(proc) -> str:
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


@pytest.mark.parametrize("binary, args, message", [
    ("correlate", ["--results={runs}", "--out=/proc/lrbs_test/out", "--nofigures"],
     "correlate: error: /proc/lrbs_test"),
    ("nqm", ["--out=/proc/lrbs_test/out"], "nqm: error: /proc/lrbs_test"),
    ("correlate", ["--results={runs}", "--alpha=nan"], "correlate: error: --alpha=nan is not in (0, 1)"),
    ("correlate", ["--results={runs}", "--target_train_loss=inf"],
     "correlate: error: --target_train_loss=inf is not a loss > 0"),
])
def test_paths_and_values_that_cannot_be_used_are_one_line(tmp_path, binary, args, message):
    runs = tmp_path / "runs"
    write_grid(runs, lambda bs, lr: 0.5 + bs / 1000)
    proc = run_bin(binary, *[a.format(runs=runs) for a in args], cwd=tmp_path)
    assert proc.returncode == 2 and one_line(proc).startswith(message), proc.stderr
    assert not (runs / "correlate").exists()


SHARPNESS = {"num_params": 1000, "trace": 50.0, "grad_cov_trace": 3.0, "top_eigenvalues": [9.0, 4.0],
             "num_examples": 512}


@pytest.mark.parametrize("record, message", [
    ({"trace": "12"}, "bad.json has trace='12', not numbers"),
    ({"num_params": 1000.5}, "bad.json has num_params=1000.5, not numbers"),
    ({"top_eigenvalues": ["9", 4.0]}, "has top_eigenvalues=['9', 4.0], not numbers"),
    ({"run_config": {"lr": 0.1, "batch_size": 64, "num_train": "12"}},
     "the run's settings have num_train='12', not numbers"),
    ({"run_config": {"lr": 0.1, "batch_size": 64, "num_train": 4000, "momentum": "0.9"}},
     "the run's settings have momentum='0.9', not numbers"),
    ({"run_config": {"lr": 0.1, "batch_size": True, "num_train": 4000}},
     "batch size True is not a positive integer"),
    ({"run_config": {"lr": "0.1", "batch_size": 64, "num_train": 4000}}, "learning rate '0.1' is not a finite"),
])
def test_bin_bound_never_reads_a_string_as_a_number(tmp_path, record, message):
    """Case 9 of issue 22: bin/bound read the string "12" as the number 12. A sharpness.json without its run
    folder carries the run's settings in run_config."""
    good = {**SHARPNESS, "run_config": {"lr": 0.1, "batch_size": 64, "num_train": 4000, "momentum": 0.0}}
    (tmp_path / "bad.json").write_text(json.dumps({**good, **record}))
    proc = run_bin("bound", f"--sharpness_json={tmp_path / 'bad.json'}", cwd=tmp_path)
    assert proc.returncode == 2 and message in one_line(proc), proc.stderr
    (tmp_path / "good.json").write_text(json.dumps(good))
    assert run_bin("bound", f"--sharpness_json={tmp_path / 'good.json'}", cwd=tmp_path).returncode == 0


def test_bin_sharpness_refuses_non_finite_floats_and_names_a_path_with_a_newline_whole(tmp_path):
    proc = run_bin("sharpness", "--ckpt=x", "--hutchinson_rtol=inf", cwd=tmp_path)
    assert proc.returncode == 2 and "--hutchinson_rtol=inf" in one_line(proc)
    odd = tmp_path / "a\nb"
    proc = run_bin("sharpness", f"--ckpt={odd}", cwd=tmp_path)
    assert proc.returncode == 2 and f"{tmp_path}/a\\nb" in one_line(proc)  # was cut at the newline


def _refusal_bench():
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("refusal_bench", REPO / "benchmarks" / "refusal_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFUSALS = _refusal_bench()


@pytest.mark.parametrize("case", REFUSALS.CASES, ids=[c[0] for c in REFUSALS.CASES])
def test_the_readmes_bad_inputs_are_refused_before_tensorflow_loads(tmp_path, case):
    """Each bad input of docs/guide.md's list (and issue 23's) is one line, exit 2, and refused before
    TensorFlow is imported: checked, not timed (benchmarks/refusal_bench.py times them)."""
    result = REFUSALS.refuse(case[1], REFUSALS.case_args(case, tmp_path), tmp_path)
    assert result["returncode"] == 2, result
    assert len(result["stderr"].splitlines()) == 1 and "Traceback" not in result["stderr"], result
    assert result["stderr"].startswith(f"{case[1]}: error: ")
    assert result["tensorflow"] is False, result
