"""bin/train: the command line over `lrbs_tf.runs.config`, and the run folder's life cycle (new, resumed, finished,
refused).

The configuration, its defaults and its checks are `lrbs_tf.runs.config`; the training loop is `lrbs_tf.training.loop`,
imported only once there is something to train, so bad flags are reported in a fraction of a second, on
one line, without TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from lrbs_tf.core import provenance
from lrbs_tf.core.resources import quiet_import_tensorflow
from lrbs_tf.data.specs import DATASETS, known_train_size
from lrbs_tf.runs import folder as runfolder, locking
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


def early_facts(cfg: TrainConfig) -> RuntimeFacts:
    """What is known of the data and devices before TensorFlow loads: a known dataset's training-set size
    (batch sizes and step budgets are checked now), the replicas of --cpu_devices (training.distribute's
    MirroredStrategy over that many logical CPUs, unless TF_CONFIG names several workers), and an npz file's
    name and keys. Bad input is so refused in about a second (benchmarks/refusal.md)."""
    from lrbs_tf.data.loaders import DataError, check_npz_file

    if cfg.dataset == "npz":
        try:
            check_npz_file(cfg.data_path)
        except DataError as e:
            raise UsageError(str(e)) from None
    try:
        workers = json.loads(os.environ.get("TF_CONFIG") or "{}")["cluster"]["worker"]
    except (ValueError, KeyError, TypeError):
        workers = []  # no cluster (or one TensorFlow refuses itself)
    replicas = cfg.cpu_devices if cfg.cpu_devices > 1 and len(workers) <= 1 else None
    return RuntimeFacts(num_train=known_train_size(cfg.dataset), replicas=replicas)


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
    Each unfinished member's folder is locked (lrbs_tf.runs.locking) from before its state is read until its
    result is written: RunLocked, with nothing changed, when another process holds one of them.
    """
    lrs = list(lrs)
    if not lrs:
        raise UsageError("lr: no learning rate given")
    if len(set(lrs)) != len(lrs):
        raise UsageError(f"lr={','.join(map(str, lrs))} repeats a learning rate (one run folder each)")
    if len(lrs) > 1 and cfg.run_name:
        raise UsageError(f"run_name={cfg.run_name!r} names one folder but lr lists {len(lrs)} learning rates")
    cfgs = [dataclasses.replace(cfg, lr=lr) for lr in lrs]
    facts = early_facts(cfg)
    for c in cfgs:
        validate(c, facts)
    cfgs = [within_cpu_quota(c.resolved()) for c in cfgs]
    check_distinct_folders(cfgs)
    workdir = Path(cfg.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"workdir={cfg.workdir} is a file, not a folder")
    results: list[dict | None] = [None] * len(cfgs)
    for i, c in enumerate(cfgs):
        results[i] = finished_result(c)
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    with contextlib.ExitStack() as held:
        if writes_run_folders():
            for i in todo:  # every member's folder, before any is written; RunLocked leaves all as they were
                held.enter_context(locking.RunLock(cfgs[i].run_dir, "bin/train"))
            for i in todo:  # again under the lock: another process may have finished it meanwhile
                results[i] = finished_result(cfgs[i])
            todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            quiet_import_tensorflow()
            from lrbs_tf.training import loop

            trained = loop.train([cfgs[i] for i in todo], [settings(cfgs[i]) for i in todo], run_provenance)
            for i, result in zip(todo, trained):
                results[i] = result
    return results


def check_distinct_folders(cfgs: Sequence[TrainConfig]) -> None:
    """Learning rates that agree to the run name's 10 significant digits would share one folder (and
    overwrite each other's files): refused, as bin/sweep refuses them."""
    seen: dict[str, float] = {}
    for c in cfgs:
        if c.run_name in seen:
            raise UsageError(f"lr={seen[c.run_name]!r} and lr={c.lr!r} share the run folder {c.run_dir} (run names "
                             "carry 10 significant digits of the learning rate); give learning rates that differ "
                             "in their first 10 digits")
        seen[c.run_name] = c.lr


def finished_result(c: TrainConfig) -> dict | None:
    """The result.json content of `c`'s run folder when the run is finished (it is left alone), else None.
    Refuses a folder of another configuration, and a non-empty folder that is not a run folder (its lock file
    aside: a run killed before it wrote config.json leaves only that)."""
    run_dir = c.run_dir
    if (run_dir / runfolder.CONFIG).exists():
        check_same_configuration(run_dir, c)
        result = runfolder.read_result(run_dir)
        if result is not None and result.finished:
            print(f"{run_dir} already finished (status {result.status}, {result.epochs} epochs); "
                  "nothing to do", flush=True)
            return result.raw
    elif run_dir.is_dir() and any(p.name != locking.LOCK_FILE for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} exists and is not a run folder (no config.json); refusing to write "
                         "into it")
    return None


def writes_run_folders() -> bool:
    """Whether this process writes run folders: under MultiWorkerMirroredStrategy (TF_CONFIG) only the chief
    does (task 'chief', or worker 0 when the cluster names none), so only the chief takes their locks."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        tf_config = json.loads(raw)
        task, cluster = tf_config.get("task") or {}, tf_config.get("cluster") or {}
    except (ValueError, AttributeError):
        return True  # TensorFlow refuses such a TF_CONFIG itself
    if task.get("type") == "chief":
        return True
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster
