"""Step budgets (--max_steps) and the step axis: exact step counts, a partial last epoch recorded and
checkpointed like any, resuming to the uninterrupted run's metrics, how a run ended, and run names that keep
step-budget runs apart from epoch-budget ones."""

from __future__ import annotations

import shutil

import pytest

from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import checkpoints, folder as runfolder
from lrbs_tf.runs.config import RuntimeFacts, TrainConfig, budget_steps, run_name, validate
from lrbs_tf.training.run import run, run_column
from tests.helpers import run_bin, small_config, without_seconds

# MNIST-1D's 4000 training examples at batch 64: 62 steps per epoch, so 150 steps are 62 + 62 + 26.
SPE, MAX_STEPS, STEPS = 62, 150, [62, 124, 150]
EACH = [SPE] * 5  # the steps of each of 5 epochs (TrainConfig.epoch_step_counts)
NAME = "mlp-mnist1d-bs64-lr0.1-s0-steps150"


def test_the_budget_in_epochs_and_steps():
    cfg = TrainConfig(epochs=5, max_steps=MAX_STEPS)
    assert cfg.budget_epochs(EACH) == 3
    assert [cfg.epoch_steps(e, EACH) for e in range(5)] == [62, 62, 26, 0, 0]
    assert TrainConfig(epochs=5, max_steps=124).budget_epochs(EACH) == 2  # ends on an epoch's boundary
    plain = TrainConfig(epochs=5)
    assert plain.budget_epochs(EACH) == 5 and [plain.epoch_steps(e, EACH) for e in range(5)] == [62] * 5
    assert budget_steps(5, None, EACH) == 310 and budget_steps(5, 150, EACH) == 150 and budget_steps(2, 124, EACH) == 124


@pytest.mark.parametrize("kw, message", [
    (dict(max_steps=0), "max_steps=0 must be > 0 (leave it unset for no step budget)"),
    (dict(max_steps=-5), "max_steps=-5 must be > 0"),
    (dict(max_steps=311, epochs=5), "max_steps=311 is more than epochs=5 allow at batch_size=64 (5 x 62 steps "
                                    "= 310); raise --epochs"),
    (dict(max_steps=150, epochs=5, checkpoint_epochs=(4,)), "checkpoint_epochs holds 4, beyond the 3 epochs of "
                                                            "max_steps=150 at batch_size=64"),
])
def test_bad_budgets_are_refused_naming_the_values(tmp_path, kw, message):
    with pytest.raises(UsageError) as e:
        validate(small_config(tmp_path, **kw), RuntimeFacts(num_train=4000))
    assert str(e.value).startswith(message)
    validate(small_config(tmp_path, max_steps=310, epochs=5), RuntimeFacts(num_train=4000))  # exactly fits


def test_a_step_budget_is_in_the_run_name_and_the_identity(tmp_path):
    assert run_name("mlp", "mnist1d", 64, 0.1, 0, max_steps=150) == NAME
    assert run_name("mlp", "mnist1d", 64, 0.1, 0, 0.9, 5e-4, 150) == "mlp-mnist1d-bs64-lr0.1-s0-m0.9-wd0.0005-steps150"
    assert small_config(tmp_path, max_steps=150).resolved().run_name == NAME
    assert small_config(tmp_path).resolved().run_name == "mlp-mnist1d-bs64-lr0.1-s0"  # epoch budgets: unchanged


def test_a_step_budget_run_ends_at_exactly_n_steps_and_resumes_to_the_same_metrics(tmp_path, capsys):
    """150 steps in epochs of 62: the third epoch is partial, recorded, evaluated and checkpointed as the
    run's last. A kill after its metrics line but before its checkpoint resumes from epoch 2 and redoes the
    26 steps; a kill after its checkpoint but before result.json finishes without training. Both end with the
    uninterrupted run's metrics.jsonl and result.json."""
    reference = tmp_path / "reference"
    result = run(small_config(reference, epochs=5, max_steps=MAX_STEPS))
    ref_dir = reference / NAME
    rows = runfolder.read_metrics(ref_dir)
    assert [(r["epoch"], r["step"], r["examples_seen"]) for r in rows] == [(1, 62, 3968), (2, 124, 7936),
                                                                          (3, 150, 9600)]
    assert (result["status"], result["epochs"], result["steps"], result["stop_reason"]) == ("done", 3, 150,
                                                                                           "max_steps")
    assert [e for e, _ in checkpoints.candidates(ref_dir / runfolder.CKPT_DIR)] == [3, 2]
    assert runfolder.read_config(ref_dir).raw["max_steps"] == MAX_STEPS
    assert rows[2]["train_loss"] != rows[1]["train_loss"]  # the partial epoch trained and was measured

    cuts = (("before_checkpoint", (f"{runfolder.CKPT_DIR}/ckpt-3.*", runfolder.RESULT, runfolder.MODEL), 2),
            ("before_result", (runfolder.RESULT, runfolder.MODEL), 3))
    for cut, lost, resumed_after in cuts:
        run_dir = tmp_path / cut / NAME
        shutil.copytree(ref_dir, run_dir)
        for pattern in lost:
            for path in run_dir.glob(pattern):
                path.unlink()
        assert runfolder.read_result(run_dir) is None
        capsys.readouterr()
        again = run(small_config(tmp_path / cut, epochs=5, max_steps=MAX_STEPS))
        assert f"resuming {run_dir} after epoch {resumed_after}" in capsys.readouterr().out
        assert without_seconds(runfolder.read_metrics(run_dir)) == without_seconds(rows), cut
        assert again == result, cut


def test_a_column_at_a_step_budget_says_how_each_run_ended(tmp_path):
    """One column at 150 steps and a loss target of 2.0: lr 0.02 trains all its steps without reaching the
    target, lr 0.4 reaches it at an epoch's end first, lr 1e5 diverges in its first epoch."""
    results = run_column(small_config(tmp_path, epochs=5, max_steps=MAX_STEPS, stop_at_train_loss=2.0),
                         [0.02, 0.4, 1e5])
    (slow, fast, diverged) = results
    assert (slow["status"], slow["steps"], slow["epochs"], slow["stop_reason"]) == ("done", 150, 3, "max_steps")
    assert fast["status"] == "done" and fast["stop_reason"] == "stop_at_train_loss" and fast["stopped_early"]
    assert fast["steps"] == SPE * fast["epochs"] < 150  # stopped at a whole epoch's end
    assert diverged["status"] == "diverged" and diverged["stop_reason"] == "diverged"
    assert 1 <= diverged["steps"] <= SPE  # steps up to its first non-finite loss, that one included
    row = runfolder.read_metrics(tmp_path / "mlp-mnist1d-bs64-lr100000-s0-steps150")[0]
    assert row["step"] == diverged["steps"] and row["examples_seen"] == 64 * row["step"]


def test_the_command_line_refuses_bad_budgets_on_one_line(tmp_path):
    for args, message in ((["--max_steps=0"], "train: error: max_steps=0 must be > 0"),
                          (["--max_steps=63", "--epochs=1"], "train: error: max_steps=63 is more than epochs=1 "
                                                             "allow at batch_size=64 (1 x 62 steps = 62)")):
        proc = run_bin("train", *args, "--epochs=1", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
        assert proc.stderr.startswith(message)
        assert not (tmp_path / "w").exists()


def test_a_sweep_at_a_step_budget_counts_equal_steps_and_forwards_the_budget(tmp_path):
    proc = run_bin("sweep", "--batch_sizes=16,32,48,64", "--lrs=0.1,0.2", "--seeds=0", "--epochs=3",
                   "--max_steps=150", "--num_shards=2", "--shard_index=0", "--workers=1",
                   f"--workdir={tmp_path / 'w'}", "--dry_list", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Every run takes 150 steps at this budget, so two shards of four runs each hold half the steps.
    assert lines[0].startswith("shard 0 of 2: 4 of the grid's 8 runs (50% of its optimizer steps)")
    assert all("--max_steps=150" in line for line in lines[1:])
    refused = run_bin("sweep", "--batch_sizes=16,64", "--lrs=0.1", "--seeds=0", "--epochs=2", "--max_steps=200",
                      f"--workdir={tmp_path / 'w'}", "--dry_list", timeout=120)
    assert refused.returncode == 2
    assert "max_steps=200 is more than epochs=2 allow at batch_size=64 (2 x 62 steps = 124)" in refused.stderr
