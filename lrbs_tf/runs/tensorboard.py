"""TensorBoard for run folders: each run's HParams, its per-epoch scalars, and its curvature.

`tensorboard --logdir outputs/quick` then shows the grid in the HParams dashboard: one session per run
folder (its `tb/`), with the hyperparameters a study varies or fixes (HPARAMS) and, as metrics, the run's
per-epoch scalars on the step axis (optimizer steps, so runs of different batch sizes or budgets line up
by updates; `epoch` is a scalar of its own), its result.json numbers so far (`result/...`, rewritten every epoch, so the last value
is the final one) and, once bin/sharpness has measured it, its curvature (`tb/sharpness/`, group
"sharpness"). The dashboard infers the experiment from these sessions; nothing is written above the run
folders, so every file keeps one writer: bin/train writes `tb/`, bin/sharpness writes `tb/sharpness/`.
Writers are flushed every epoch, so a running study is visible as it goes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lrbs_tf.runs import folder as runfolder

if TYPE_CHECKING:  # TensorFlow and TensorBoard are imported when a writer is made, not with this module
    import tensorflow as tf

# The HParams of a session, in the order the dashboard lists them: config.json keys, except `dataset` (the
# dataset's name: --dataset_name when given) and `bs_over_lr` (BS/LR, the ratio He et al. vary).
HPARAMS = ("arch", "dataset", "batch_size", "lr", "bs_over_lr", "momentum", "weight_decay", "seed", "epochs",
           "max_steps", "stop_at_train_loss")
NO_STEP_BUDGET = 0  # max_steps' HParam for a run without one (an HParam cannot be None; 0 is no valid budget)
RESULT_GROUP = "result"
SHARPNESS_DIR = "sharpness"            # inside the run's tb/: its own event files, written by bin/sharpness
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32, the type of TensorBoard's scalars



def hparams_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A run's HParams from its config.json settings (flag-keyed, as lrbs_tf.runs.config.settings gives them)."""
    values = {k: settings[k] for k in HPARAMS if k in settings}
    values["dataset"] = settings.get("dataset_name") or settings["dataset"]
    values["bs_over_lr"] = runfolder.ratio(settings["batch_size"], settings["lr"])  # as runs.csv's ratio
    if values.get("max_steps") is None:
        values["max_steps"] = NO_STEP_BUDGET
    return {k: values[k] for k in HPARAMS}


class RunWriter:
    """The TensorBoard writer of one run folder's tb/: HParams once per process start, scalars per epoch."""

    def __init__(self, log_dir: str | Path, hparams: Mapping[str, Any], trial_id: str) -> None:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        self._writer = tf.summary.create_file_writer(str(log_dir))
        with self._writer.as_default():
            hp.hparams(dict(hparams), trial_id=trial_id)  # the session's HParams (rewritten on resume: same values)
        self._writer.flush()
        self._metric_keys = tuple(k for k in runfolder.METRIC_KEYS if k != "step")
        self._names = (*self._metric_keys, *(f"{RESULT_GROUP}/{k}" for k in runfolder.RESULT_NUMBERS))
        n = len(self._names)
        # One tf.function call per epoch instead of one eager op per scalar (benchmarks/sweep.md has the
        # per-epoch overhead this removed).
        self._write = tf.function(self._scalars, input_signature=[
            tf.TensorSpec([n], tf.float32), tf.TensorSpec([n], tf.bool), tf.TensorSpec([], tf.int64)])

    def _scalars(self, values: tf.Tensor, keep: tf.Tensor, step: tf.Tensor) -> None:
        # tf.summary.write with the tag spelt out (what tf.summary.scalar writes): inside the conds that skip
        # non-finite values, tf.summary.scalar's tag would gain the cond's name scope ("cond_3/test_loss").
        import tensorflow as tf
        from tensorboard.plugins.scalar import metadata as scalar_metadata

        metadata = scalar_metadata.create_summary_metadata(display_name=None, description=None)
        with self._writer.as_default(step=step):
            for i, name in enumerate(self._names):
                if keep[i]:
                    tf.summary.write(name, values[i], metadata=metadata.SerializeToString())

    def epoch(self, epoch: int, metrics: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Epoch `epoch`'s metrics.jsonl row (finite values) and the result.json numbers so far, flushed, at
        the row's `step` (optimizer steps so far).

        Result numbers are written even when not finite (NaN), so a diverged run's final train loss reads
        NaN as result.json's null does, rather than the last finite one. TensorBoard stores float32: a
        diverging run's 1e300 is left out of the metrics (as a non-finite value is) and is NaN in results."""
        values, keep = [], []
        for key in self._metric_keys:
            value = metrics.get(key)
            ok = value is not None and math.isfinite(value) and abs(value) <= FLOAT32_MAX
            values.append(float(value) if ok else math.nan)
            keep.append(ok)
        for key in runfolder.RESULT_NUMBERS:
            value = result.get(key)
            ok = value is not None and math.isfinite(float(value)) and abs(float(value)) <= FLOAT32_MAX
            values.append(float(value) if ok else math.nan)
            keep.append(True)
        import tensorflow as tf

        self._write(tf.constant(values, tf.float32), tf.constant(keep), tf.constant(int(metrics["step"]), tf.int64))
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()


def write_sharpness(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """bin/sharpness's quantities as scalars in `<run_dir>/tb/sharpness/` (its own event file), at the
    run's last step, so the run's HParams session shows them as the metric group "sharpness" (at its last
    epoch for a result.json of an older lrbs_tf, whose scalars were on the epoch axis)."""
    result = runfolder.read_result(run_dir)
    step = 0
    if result is not None:
        step = result.steps if result.steps is not None else result.epochs if isinstance(result.epochs, int) else 0
    import tensorflow as tf

    log_dir = Path(run_dir) / runfolder.TENSORBOARD_DIR / SHARPNESS_DIR
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=step):
        for key in runfolder.SHARPNESS_QUANTITIES:  # those bin/correlate tests; absent or non-finite left out
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                tf.summary.scalar(key, float(value))
    writer.flush()
    writer.close()
    return log_dir
