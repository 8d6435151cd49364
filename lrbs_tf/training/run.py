"""bin/train: the command line over `lrbs_tf.runs.config`, and the run folder's life cycle (new, resumed, finished,
refused).

The configuration, its defaults and its checks are `lrbs_tf.runs.config`; the training loop is `lrbs_tf.training.loop`,
imported only once there is something to train, so bad flags are reported in a fraction of a second, on
one line, without TensorFlow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from lrbs_tf.core import provenance
from lrbs_tf.core.resources import quiet_import_tensorflow
from lrbs_tf.data.specs import DATASETS
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.config import (
    RuntimeFacts,
    TrainConfig,
    UsageError,
    identity_differences,
    model_settings,
    settings,
    validate,
)

# The packages whose versions config.json records (beside Python's).
RECORDED_PACKAGES = ("tensorflow", "keras", "numpy", "tensorflow_datasets", "mnist1d")


def run_provenance() -> dict:
    """config.json's provenance: versions, the checkout's git commit, when, and the command line."""
    return provenance.record(RECORDED_PACKAGES)


def check_same_configuration(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuses to mix two configurations in one run folder."""
    diffs = identity_differences(runfolder.read_recorded_settings(run_dir), cfg)
    if diffs:
        raise UsageError(f"{run_dir} holds another configuration ({'; '.join(diffs)}); "
                         "choose another --run_name or --workdir")


def dry_run(cfg: TrainConfig) -> None:
    """Prints the model summary and its trainable parameter count; reads no data and writes nothing."""
    from lrbs_tf.data.loaders import DataError, npz_shape
    from lrbs_tf.models import builders as models

    spec = DATASETS[cfg.dataset]
    if spec.input_shape is None:
        try:
            input_shape, num_classes = npz_shape(cfg.data_path)
        except DataError as e:
            raise UsageError(str(e)) from None
        validate(cfg, RuntimeFacts(input_shape=input_shape, num_classes=num_classes))
    else:
        input_shape, num_classes = spec.input_shape, spec.num_classes
    model = models.build_model(cfg.arch, num_classes, input_shape, **model_settings(cfg))
    model.summary(print_fn=lambda line, **_: print(line))
    print(f"trainable parameters: {models.count_trainable_params(model):,}")


def within_cpu_quota(cfg: TrainConfig) -> TrainConfig:
    """--intra_op_threads=0 is TensorFlow's default, a thread per core of the affinity mask: in a container
    whose CPU quota is lower (a pod's limits.cpu), that many threads are throttled in turn. The quota's
    cores are used instead; an execution setting, so a resumed run may differ in it."""
    from lrbs_tf.core.resources import available_cores, cgroup_cpu_limit

    if cfg.intra_op_threads or cgroup_cpu_limit() is None:
        return cfg
    return dataclasses.replace(cfg, intra_op_threads=available_cores())


def run(cfg: TrainConfig) -> dict:
    """Trains one run into `<workdir>/<run_name>/` (resuming it if it was interrupted); see run_column."""
    return run_column(cfg, [cfg.lr])[0]


def run_column(cfg: TrainConfig, lrs: Sequence[float]) -> list[dict]:
    """Trains the runs `cfg` with each learning rate of `lrs`, as one vectorised column, into K run folders.

    Each folder is the same run (to float tolerance) as training that learning rate alone with the same
    seed. Finished runs are left as they are; unfinished ones resume from their checkpoints. Everything is
    checked before anything is written. Returns each run's result.json content, in the order of `lrs`.
    Raises UsageError for bad input and TrainingFailed when training itself fails (recorded as failed).
    """
    lrs = list(lrs)
    if not lrs:
        raise UsageError("lr: no learning rate given")
    if len(set(lrs)) != len(lrs):
        raise UsageError(f"lr={','.join(map(str, lrs))} repeats a learning rate (one run folder each)")
    if len(lrs) > 1 and cfg.run_name:
        raise UsageError(f"run_name={cfg.run_name!r} names one folder but lr lists {len(lrs)} learning rates")
    cfgs = [dataclasses.replace(cfg, lr=lr) for lr in lrs]
    for c in cfgs:
        validate(c)
    cfgs = [within_cpu_quota(c.resolved()) for c in cfgs]
    results: list[dict | None] = [None] * len(cfgs)
    for i, c in enumerate(cfgs):
        run_dir = c.run_dir
        if (run_dir / runfolder.CONFIG).exists():
            check_same_configuration(run_dir, c)
            result = runfolder.read_result(run_dir)
            if result is not None and result.finished:
                print(f"{run_dir} already finished (status {result.status}, {result.epochs} epochs); "
                      "nothing to do", flush=True)
                results[i] = result.raw
        elif run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"{run_dir} exists and is not a run folder (no config.json); refusing to write "
                             "into it")
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        quiet_import_tensorflow()
        from lrbs_tf.training import loop

        trained = loop.train([cfgs[i] for i in todo], [settings(cfgs[i]) for i in todo], run_provenance)
        for i, result in zip(todo, trained):
            results[i] = result
    return results
