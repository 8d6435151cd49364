"""bin/train: the configuration, its validation, and the run folder's life cycle.

The TensorFlow part (the training loop itself) is `lrbs_tf.loop`; this module does not import TensorFlow at
import time, so bad flags are reported in a fraction of a second, on one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from lrbs_tf import runfolder
from lrbs_tf.cli import UsageError, quiet_import_tensorflow, run_app
from lrbs_tf.data import DATASETS
from lrbs_tf.model_names import ARCH_NAMES


class TrainingFailed(RuntimeError):
    """Training itself failed (not bad input); the run folder records status `failed` and the error."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one run; field names are the flag names and the keys of config.json."""
    arch: str = "mlp"
    dataset: str = "mnist1d"
    batch_size: int = 64
    lr: float = 0.05
    epochs: int = 200
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    augment: bool | None = None
    stop_at_train_loss: float = 0.0
    mlp_depth: int = 4
    mlp_width: int = 256
    mlp_batch_norm: bool = False
    mixed_precision: str = "off"
    data_dir: str | None = None
    data_path: str | None = None
    workdir: str = "outputs"
    run_name: str | None = None
    eval_batch_size: int = 1000
    steps_per_call: int = 0
    jit_compile: bool = False
    deterministic: bool = True
    tf32: bool = False
    cpu_devices: int = 0
    checkpoints_to_keep: int = 2
    progress: bool | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    column_engine: str = "auto"

    @classmethod
    def from_flags(cls, flag_values: Any, **overrides: Any) -> "TrainConfig":
        values = {f.name: getattr(flag_values, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, **overrides})

    def resolved(self) -> "TrainConfig":
        """Fills the dataset-dependent defaults (augmentation, run name)."""
        augment = DATASETS[self.dataset].augment_by_default if self.augment is None else self.augment
        name = self.run_name or runfolder.run_name(self.arch, self.dataset, self.batch_size, self.lr, self.seed,
                                                   self.momentum, self.weight_decay)
        return dataclasses.replace(self, augment=augment, run_name=name)

    @property
    def run_dir(self) -> Path:
        return Path(self.workdir) / self.run_name


# Settings that only change how the computation runs (or where), not what a run is: they may differ when a
# run is resumed. Everything else must match the run folder's config.json.
EXECUTION_SETTINGS = frozenset({"workdir", "run_name", "data_dir", "eval_batch_size", "steps_per_call",
                                "jit_compile", "deterministic", "tf32", "cpu_devices", "checkpoints_to_keep",
                                "progress", "intra_op_threads", "inter_op_threads", "column_engine"})

# Every setting's default. A config.json or sweep.json written by an older lrbs_tf, before a setting existed,
# lacks its key; the run was made with the default, so readers compare against this.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

# --mixed_precision -> the Keras dtype policy the models are built under.
MIXED_PRECISION = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def validate(cfg: TrainConfig) -> None:
    """Checks what can be checked without data or TensorFlow; raises UsageError naming the bad value."""
    if cfg.arch not in ARCH_NAMES:
        raise UsageError(f"unknown arch {cfg.arch!r}; valid: {', '.join(ARCH_NAMES)}")
    if cfg.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS)}")
    positive = {"lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                "eval_batch_size": cfg.eval_batch_size, "mlp_depth": cfg.mlp_depth, "mlp_width": cfg.mlp_width,
                "checkpoints_to_keep": cfg.checkpoints_to_keep}
    for name, value in positive.items():
        if not value > 0:  # also rejects NaN
            raise UsageError(f"{name}={value} must be > 0")
    if not 0.0 <= cfg.momentum < 1.0:
        raise UsageError(f"momentum={cfg.momentum} must be in [0, 1)")
    if not cfg.weight_decay >= 0.0:
        raise UsageError(f"weight_decay={cfg.weight_decay} must be >= 0")
    if not cfg.stop_at_train_loss >= 0.0:
        raise UsageError(f"stop_at_train_loss={cfg.stop_at_train_loss} must be >= 0")
    for name in ("steps_per_call", "cpu_devices", "intra_op_threads", "inter_op_threads"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"{name}={getattr(cfg, name)} must be >= 0")
    if cfg.dataset in DATASETS and DATASETS[cfg.dataset].input_shape is not None:
        shape = DATASETS[cfg.dataset].input_shape
        if cfg.arch != "mlp" and len(shape) != 3:
            raise UsageError(f"arch {cfg.arch!r} needs image inputs; dataset {cfg.dataset!r} has examples of "
                             f"shape {shape} (use --arch=mlp)")
        if cfg.augment and len(shape) != 3:
            raise UsageError(f"--augment crops and flips images; dataset {cfg.dataset!r} has examples of shape "
                             f"{shape} (use --noaugment)")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"mixed_precision={cfg.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}")
    if cfg.column_engine == "stacked" and (cfg.arch != "mlp" or cfg.mixed_precision != "off" or cfg.cpu_devices > 1):
        raise UsageError(f"column_engine=stacked needs an mlp in float32 on one device; arch={cfg.arch}, "
                         f"mixed_precision={cfg.mixed_precision}, cpu_devices={cfg.cpu_devices}")
    if cfg.dataset == "npz" and not cfg.data_path:
        raise UsageError("--dataset=npz needs --data_path=FILE.npz")
    if cfg.run_name is not None and (not cfg.run_name or "/" in cfg.run_name or cfg.run_name in (".", "..")):
        raise UsageError(f"run_name={cfg.run_name!r} must be a plain folder name")


def settings(cfg: TrainConfig) -> dict:
    """The flag-keyed settings recorded in config.json."""
    return dataclasses.asdict(cfg)


def check_same_configuration(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuses to mix two configurations in one run folder."""
    old = runfolder.read_config(run_dir)
    new = settings(cfg)
    diffs = [f"{k}={old.get(k, DEFAULTS[k])!r} in config.json but {k}={v!r} now" for k, v in new.items()
             if k not in EXECUTION_SETTINGS and old.get(k, DEFAULTS[k]) != v]
    if diffs:
        raise UsageError(f"{run_dir} holds another configuration ({'; '.join(diffs)}); "
                         "choose another --run_name or --workdir")


def provenance() -> dict:
    """Library versions and the git commit of the lrbs_tf checkout (when it is one)."""
    import keras
    import numpy
    import tensorflow as tf

    versions = {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                "numpy": numpy.__version__}
    for pkg in ("tensorflow_datasets", "mnist1d"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            pass
    commit = None
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit and dirty:
            commit += "-dirty"
    except Exception:
        pass
    return {"versions": versions, "git_commit": commit,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def dry_run(cfg: TrainConfig) -> None:
    """Prints the model summary and its trainable parameter count; reads no data and writes nothing."""
    from lrbs_tf import models
    from lrbs_tf.data import npz_shape

    spec = DATASETS[cfg.dataset]
    if spec.input_shape is None:
        input_shape, num_classes = npz_shape(cfg.data_path)
    else:
        input_shape, num_classes = spec.input_shape, spec.num_classes
    model = models.build_model(cfg.arch, num_classes, input_shape, mlp_depth=cfg.mlp_depth,
                               mlp_width=cfg.mlp_width, mlp_batch_norm=cfg.mlp_batch_norm)
    model.summary(print_fn=lambda line, **_: print(line))
    print(f"trainable parameters: {models.count_trainable_params(model):,}")


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
    cfgs = [c.resolved() for c in cfgs]
    results: list[dict | None] = [None] * len(cfgs)
    for i, c in enumerate(cfgs):
        run_dir = c.run_dir
        if (run_dir / runfolder.CONFIG).exists():
            check_same_configuration(run_dir, c)
            result = runfolder.read_result(run_dir)
            if result and result.get("status") in runfolder.TERMINAL_STATUSES:
                print(f"{run_dir} already finished (status {result['status']}, {result.get('epochs')} epochs); "
                      "nothing to do", flush=True)
                results[i] = result
        elif run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"{run_dir} exists and is not a run folder (no config.json); refusing to write "
                             "into it")
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        quiet_import_tensorflow()
        from lrbs_tf import loop

        trained = loop.train([cfgs[i] for i in todo], [settings(cfgs[i]) for i in todo], provenance)
        for i, result in zip(todo, trained):
            results[i] = result
    return results


def parse_lrs(values: Sequence[str]) -> list[float]:
    """--lr=0.01,0.02 -> [0.01, 0.02], naming the entry that is not a number."""
    lrs = []
    for v in values:
        try:
            lrs.append(float(v))
        except ValueError:
            raise UsageError(f"lr={v!r} is not a number") from None
    return lrs


def _main(argv: Sequence[str]) -> int:
    from absl import flags

    lrs = parse_lrs(flags.FLAGS.lr)
    cfg = TrainConfig.from_flags(flags.FLAGS, lr=lrs[0] if lrs else 0.0)
    if flags.FLAGS.dry_run:
        validate(cfg)
        quiet_import_tensorflow()
        dry_run(cfg.resolved())
        return 0
    try:
        results = run_column(cfg, lrs)
    except TrainingFailed as e:
        print(f"train: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 1 if any(r.get("status") == runfolder.STATUS_FAILED for r in results) else 0


def main() -> None:
    from lrbs_tf import flags as lrbs_flags

    lrbs_flags.define_train_flags()
    run_app(_main)
