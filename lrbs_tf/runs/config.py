"""The training configuration: every setting of a run, its default, its allowed values and its validation.

This module is the one source of these facts. `lrbs_tf.cli.flags` defines bin/train's flags from `DEFAULTS` and
the allowed-value lists here; `lrbs_tf.train` (the command line), `lrbs_tf.training.loop` (the training loop) and
`lrbs_tf.sweep` (grids) all build and check a `TrainConfig` through it. It imports neither TensorFlow nor
absl, so bad flags are refused in a fraction of a second, and a notebook can build configurations cheaply.

A setting is either part of the run's *identity* (what the run is: it must match the run folder's
config.json when a run is resumed) or an *execution setting* (how or where it is computed: it may differ on
resume). Some execution settings can still change float rounding; bin/correlate reports them when they vary
inside a group.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from lrbs_tf.core.errors import TrainingFailed, UsageError  # noqa: F401  (the error types of a configuration)
from lrbs_tf.data.specs import DATASETS
from lrbs_tf.models.registry import ARCH_NAMES, ARCHITECTURES, MLP_DEFAULTS, check_arch_input
from lrbs_tf.runs import schedule as schedules

# --mixed_precision -> the Keras dtype policy the models are built under.
MIXED_PRECISION = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
# --column_engine. 'auto' picks 'graph' everywhere: the faster engine on CPU in BENCHMARKS.md's measurements,
# and the stacked engine has not been measured on a GPU (BENCHMARKS.md says what must be first).
COLUMN_ENGINES = ("auto", "graph", "stacked")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one run; field names are the flag names and the keys of config.json."""
    arch: str = "mlp"
    dataset: str = "mnist1d"              # where the examples come from: a DATASETS loader (npz: a file)
    dataset_name: str | None = None       # what they are called (run name, bin/correlate); None: `dataset`
    batch_size: int = 64
    lr: float = 0.05
    epochs: int = 200                     # an upper bound when max_steps is given
    max_steps: int | None = None          # a step budget: the run ends after exactly this many steps; None: none
    schedule: str = ""                    # LR / batch-size step schedule (runs/schedule.py); '': constant
    momentum: float = 0.0
    weight_decay: float = 0.0
    svag: int = 1                         # SVAG's l (Li, Malladi & Arora 2021): 1 = plain SGD; see svag_coefficients
    seed: int = 0
    augment: bool | None = None           # None: the dataset's default (DATASETS[...].augment_by_default)
    stop_at_train_loss: float = 0.0
    mlp_depth: int = MLP_DEFAULTS["mlp_depth"]
    mlp_width: int = MLP_DEFAULTS["mlp_width"]
    mlp_batch_norm: bool = MLP_DEFAULTS["mlp_batch_norm"]
    mixed_precision: str = "off"
    data_dir: str | None = None
    data_path: str | None = None
    workdir: str = "outputs"
    run_name: str | None = None           # None: run_name(...) of the identity settings
    name_settings: tuple[str, ...] = ()   # ASKED_TAGS settings the default run name also carries (bin/sweep --grid)
    eval_batch_size: int = 1000
    steps_per_call: int = 0
    jit_compile: bool = False
    deterministic: bool = True
    tf32: bool = False
    cpu_devices: int = 0
    checkpoints_to_keep: int = 2
    checkpoint_seconds: float = 10.0      # a run's checkpoint at an epoch's end once this long since its last
    checkpoint_epochs: tuple[int, ...] = ()  # epochs whose checkpoints are kept for good (bin/sharpness --epoch)
    checkpoint_every: int = 0             # also keep every N-th epoch's checkpoint for good (0: off)
    checkpoint_geometric: int = 0         # also keep about this many, geometrically spaced over 1..epochs (0: off)
    progress: bool | None = None          # None: when stdout is a terminal
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    column_engine: str = "auto"

    def __post_init__(self) -> None:
        # A list flag gives strings, config.json a list: one form (a tuple of ints) for comparing and recording.
        try:
            self.checkpoint_epochs = tuple(int(e) for e in self.checkpoint_epochs or ())
        except (TypeError, ValueError):
            raise UsageError(f"checkpoint_epochs={self.checkpoint_epochs!r}: give epochs as integers, e.g. 1,5,20") \
                from None
        self.name_settings = tuple(self.name_settings or ())
        self.schedule = schedules.canonical(self.schedule)  # one text per schedule: '' when constant

    @classmethod
    def from_flags(cls, flag_values: Any, **overrides: Any) -> "TrainConfig":
        """The configuration held by parsed flags (any object with one attribute per field)."""
        values = {f.name: getattr(flag_values, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, **overrides})

    @property
    def dataset_label(self) -> str:
        """The dataset's name in the run name, config.json's readers and bin/correlate's groups: an npz
        named `cifar10` is CIFAR-10 to the study (lrbs_tf.runs.folder.RunConfig.dataset reads it back)."""
        return self.dataset_name or self.dataset

    def resolved(self) -> "TrainConfig":
        """Fills the dataset-dependent defaults (augmentation, run name). An npz named like a known dataset
        takes that dataset's augmentation default, so its runs are configured as the ones they pool with."""
        spec = DATASETS.get(self.dataset_label, DATASETS[self.dataset])
        augment = spec.augment_by_default if self.augment is None else self.augment
        cfg = dataclasses.replace(self, augment=augment)
        return dataclasses.replace(cfg, run_name=self.run_name or default_run_name(cfg))

    @property
    def run_dir(self) -> Path:
        return Path(self.workdir) / self.run_name

    @property
    def step_lr(self) -> float:
        """The learning rate each optimizer step applies: --lr, or lr / svag for SVAG (its l steps are one SGD
        step of SDE time). Under a schedule, of the epoch's configuration (at_epoch)."""
        return self.lr if self.svag == 1 else self.lr / self.svag

    @property
    def step_budget(self) -> int | None:
        """--max_steps in optimizer steps: it counts SGD steps of equal SDE time, so an SVAG run takes
        svag x max_steps of its own steps (None: no budget)."""
        return None if self.max_steps is None else self.max_steps * self.svag

    def steps_per_epoch(self, num_train: int) -> int:
        """Optimizer steps of a whole epoch at --batch_size: floor(num_train / batch_size), times `svag` (an
        SVAG epoch is the SDE time of an SGD epoch; each of its steps takes svag_batches(svag) minibatches)."""
        return num_train // self.batch_size * self.svag

    def budget_epochs(self, steps_per_epoch: Sequence[int]) -> int:
        """The epochs the run trains: --epochs, or those --max_steps reaches first (its last may be partial).
        `steps_per_epoch`: this run's optimizer steps of each epoch (epoch_step_counts)."""
        if self.step_budget is None:
            return self.epochs
        done = 0
        for epoch, steps in enumerate(steps_per_epoch[:self.epochs]):
            done += steps
            if done >= self.step_budget:
                return epoch + 1
        return self.epochs

    def epoch_steps(self, epoch: int, steps_per_epoch: Sequence[int]) -> int:
        """Optimizer steps of epoch `epoch` (0-based): a whole epoch, or what is left of --max_steps."""
        whole = steps_per_epoch[epoch]
        if self.step_budget is None:
            return whole
        return max(0, min(whole, self.step_budget - sum(steps_per_epoch[:epoch])))

    def epoch_batch_size(self, epoch: int) -> int:
        """The batch size of epoch `epoch` (0-based): --batch_size, times the schedule's factors so far."""
        return schedules.whole_batch_size(self.schedule, self.batch_size, epoch) if self.schedule else self.batch_size

    def epoch_lr(self, epoch: int) -> float:
        """The learning rate of epoch `epoch` (0-based): --lr, times the schedule's factors so far."""
        return self.lr * schedules.lr_multiplier(self.schedule, epoch) if self.schedule else self.lr

    def at_epoch(self, epoch: int) -> "TrainConfig":
        """The configuration in force in epoch `epoch` (0-based): lr and batch_size as the schedule has them
        then (itself without a schedule). The training loop's members carry it; the identity is `self`."""
        if not self.schedule:
            return self
        return dataclasses.replace(self, lr=self.epoch_lr(epoch), batch_size=self.epoch_batch_size(epoch))

    def epoch_step_counts(self, num_train: int) -> list[int]:
        """Whole optimizer steps of each of --epochs epochs (training batches drop the remainder; x svag)."""
        return [n * self.svag for n in schedule_step_counts(self.schedule, self.epochs, num_train, self.batch_size)]


def svag_coefficients(svag: int) -> tuple[float, float]:
    """SVAG's weights (r1, r2) = ((1 + sqrt(2l - 1)) / 2, (1 - sqrt(2l - 1)) / 2) of its two minibatch gradients:
    r1 + r2 = 1 (the mean is the gradient) and r1^2 + r2^2 = l (the noise covariance is l times SGD's);
    with the learning rate lr / l, l steps are one SGD step of SDE time (Li, Malladi & Arora 2021)."""
    root = math.sqrt(2 * svag - 1)
    return (1 + root) / 2, (1 - root) / 2


def svag_batches(svag: int) -> int:
    """Minibatches one optimizer step draws: SGD one, an SVAG step (svag > 1) two independent ones."""
    return 1 if svag == 1 else 2


def step_cost(svag: int) -> int:
    """Minibatch gradients an SVAG run computes per SGD step of equal SDE time: svag steps of
    svag_batches(svag) batches each (1 for plain SGD). bin/sweep weighs its shards by it."""
    return svag * svag_batches(svag)


def schedule_step_counts(schedule: str, epochs: int, num_train: int, batch_size: int) -> list[int]:
    """Whole optimizer steps of each epoch of a run with this (canonical) schedule."""
    if not schedule:
        return [num_train // batch_size] * epochs
    return [num_train // schedules.whole_batch_size(schedule, batch_size, e) for e in range(epochs)]


def budget_steps(epochs: int, max_steps: int | None, steps_per_epoch: Sequence[int]) -> int:
    """The optimizer steps a run of this budget takes, unless --stop_at_train_loss ends it sooner.
    `steps_per_epoch`: the steps of each epoch (schedule_step_counts)."""
    full = sum(steps_per_epoch[:epochs])
    return full if max_steps is None else min(full, max_steps)


def run_steps(epochs: int, max_steps: int | None, num_train: int, batch_size: int, schedule: str = "") -> int:
    """The optimizer steps of one run (bin/sweep's per-run cost, its shards' balance): its budget over the
    batch sizes its schedule trains with."""
    return budget_steps(epochs, max_steps, schedule_step_counts(schedules.canonical(schedule), epochs, num_train,
                                                                batch_size))


# Every setting's default. A config.json or sweep.json written by an older lrbs_tf, before a setting existed,
# lacks its key; the run was made with the default, so readers compare against this.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

# Settings that only change how the computation runs (or where), not what a run is: they may differ when a
# run is resumed. Everything else must match the run folder's config.json.
EXECUTION_SETTINGS = frozenset({"workdir", "run_name", "data_dir", "eval_batch_size", "steps_per_call",
                                "jit_compile", "deterministic", "tf32", "cpu_devices", "checkpoints_to_keep",
                                "checkpoint_seconds", "checkpoint_epochs", "checkpoint_every",
                                "checkpoint_geometric", "name_settings",
                                "progress", "intra_op_threads", "inter_op_threads", "column_engine"})
# Execution settings that can change float rounding (XLA fusion, TF32, op determinism, the reduction over
# replicas, the column engine's kernels): a study that mixes them should say so, so bin/correlate reports them.
ROUNDING_SETTINGS = frozenset({"jit_compile", "deterministic", "tf32", "cpu_devices", "column_engine"})
# The settings a grid varies (bin/sweep sets them per run).
GRID_SETTINGS = ("batch_size", "lr", "seed")
IDENTITY_SETTINGS = tuple(k for k in DEFAULTS if k not in EXECUTION_SETTINGS)


@dataclasses.dataclass(frozen=True)
class RuntimeFacts:
    """What only loading the data or discovering the devices reveals; None where not known yet."""
    input_shape: tuple | None = None      # per example, channels last
    num_train: int | None = None
    replicas: int | None = None
    num_classes: int | None = None


def _check_shape(cfg: TrainConfig, shape: tuple) -> None:
    check_arch_input(cfg.arch, shape, f"dataset {cfg.dataset_label!r}")
    if cfg.augment and len(shape) != 3:
        raise UsageError(f"--augment crops and flips images; dataset {cfg.dataset_label!r} has examples of shape "
                         f"{tuple(shape)} (use --noaugment)")


# A dataset name goes into run folder names: letters, digits and . _ + - only, not starting with a dot.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_dataset_name(cfg: TrainConfig, facts: RuntimeFacts) -> None:
    """--dataset_name renames npz data only; a known name must fit what is known of that dataset."""
    name = cfg.dataset_name
    if name is None:
        return
    if not _PLAIN_NAME.fullmatch(name):
        raise UsageError(f"dataset_name={name!r} must be a plain name (letters, digits, . _ + -): it goes into "
                         "run folder names")
    if cfg.dataset != "npz" and name != cfg.dataset:
        raise UsageError(f"dataset_name={name!r} with --dataset={cfg.dataset}: only npz data can be named; "
                         f"{cfg.dataset} runs are recorded as {cfg.dataset}")
    spec = DATASETS.get(name)
    if cfg.dataset != "npz" or spec is None or spec.input_shape is None:
        return
    if facts.input_shape is not None and tuple(facts.input_shape) != spec.input_shape:
        raise UsageError(f"dataset_name={name!r} but {cfg.data_path} holds examples of shape "
                         f"{tuple(facts.input_shape)}; {name}'s are {spec.input_shape}")
    if facts.num_classes is not None and facts.num_classes != spec.num_classes:
        raise UsageError(f"dataset_name={name!r} but {cfg.data_path} holds {facts.num_classes} classes; "
                         f"{name} has {spec.num_classes}")


def _check_finite(cfg: TrainConfig) -> None:
    """Every float setting is a finite number: a flag parses 'inf', 'nan' and 1e400 (= inf) as floats, and a
    run trained with one records null there, which every reader then refuses."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{f.name}={value} must be a finite number")


def _check_names_and_ranges(cfg: TrainConfig) -> None:
    _check_finite(cfg)
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
    if not math.isfinite(cfg.lr):
        raise UsageError(f"lr={cfg.lr} must be finite")
    if not 0.0 <= cfg.momentum < 1.0:
        raise UsageError(f"momentum={cfg.momentum} must be in [0, 1)")
    if not cfg.weight_decay >= 0.0:
        raise UsageError(f"weight_decay={cfg.weight_decay} must be >= 0")
    if not cfg.stop_at_train_loss >= 0.0:
        raise UsageError(f"stop_at_train_loss={cfg.stop_at_train_loss} must be >= 0")
    for name in ("checkpoint_every", "checkpoint_geometric"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"{name}={getattr(cfg, name)} must be >= 0 (0: off)")
    if not cfg.checkpoint_seconds >= 0:
        raise UsageError(f"checkpoint_seconds={cfg.checkpoint_seconds} must be >= 0 (0: every epoch)")
    schedules.check(cfg.schedule, cfg.batch_size, cfg.epochs)
    if isinstance(cfg.svag, bool) or not isinstance(cfg.svag, int) or cfg.svag < 1:
        raise UsageError(f"svag={cfg.svag!r} must be an integer >= 1 (1: plain SGD)")
    if cfg.svag > 1 and cfg.schedule:
        raise UsageError(f"svag={cfg.svag} with schedule={cfg.schedule!r}: SVAG under a schedule is not supported "
                         "(not tested together); run one or the other")
    if cfg.max_steps is not None and not cfg.max_steps > 0:
        raise UsageError(f"max_steps={cfg.max_steps} must be > 0 (leave it unset for no step budget)")
    bad = [e for e in cfg.checkpoint_epochs if not e >= 1]
    if bad:
        raise UsageError(f"checkpoint_epochs holds {bad[0]}; epochs count from 1")
    beyond = [e for e in cfg.checkpoint_epochs if e > cfg.epochs]
    if beyond:
        raise UsageError(f"checkpoint_epochs holds {beyond[0]}, beyond epochs={cfg.epochs}")
    for name in ("steps_per_call", "cpu_devices", "intra_op_threads", "inter_op_threads"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"{name}={getattr(cfg, name)} must be >= 0")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"mixed_precision={cfg.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}")
    if cfg.column_engine not in COLUMN_ENGINES:
        raise UsageError(f"column_engine={cfg.column_engine!r}; valid: {', '.join(COLUMN_ENGINES)}")
    if cfg.dataset == "npz" and not cfg.data_path:
        raise UsageError("--dataset=npz needs --data_path=FILE.npz")
    if cfg.run_name is not None and (not cfg.run_name or "/" in cfg.run_name or cfg.run_name in (".", "..")
                                     or not cfg.run_name.isprintable()):
        raise UsageError(f"run_name={cfg.run_name!r} must be a plain folder name (no '/', no control characters)")


def _check_stacked(cfg: TrainConfig, replicas: int) -> None:
    if cfg.column_engine == "stacked" and (cfg.arch != "mlp" or cfg.mixed_precision != "off" or replicas > 1):
        raise UsageError(f"column_engine=stacked needs an mlp in float32 on one device; arch={cfg.arch}, "
                         f"mixed_precision={cfg.mixed_precision}, {replicas} replica(s)")


def _check_step_budget(cfg: TrainConfig, num_train: int) -> None:
    """A step budget must fit in --epochs: a run cut short by its epochs would not have the steps its budget
    says, and runs compared at equal steps would not be."""
    if cfg.max_steps is None:
        return
    sgd_counts = schedule_step_counts(cfg.schedule, cfg.epochs, num_train, cfg.batch_size)  # what --max_steps counts
    most = budget_steps(cfg.epochs, None, sgd_counts)
    if cfg.max_steps > most:
        each = "its schedule's steps" if cfg.schedule else f"{sgd_counts[0]} steps"
        raise UsageError(f"max_steps={cfg.max_steps} is more than epochs={cfg.epochs} allow at batch_size="
                         f"{cfg.batch_size} ({cfg.epochs} x {each} = {most}); raise --epochs "
                         "(an upper bound) or lower --max_steps")
    epochs = cfg.budget_epochs(cfg.epoch_step_counts(num_train))
    beyond = [e for e in cfg.checkpoint_epochs if e > epochs]
    if beyond:
        raise UsageError(f"checkpoint_epochs holds {beyond[0]}, beyond the {epochs} epochs of max_steps="
                         f"{cfg.max_steps} at batch_size={cfg.batch_size}")


def _check_scheduled_batch_sizes(cfg: TrainConfig, facts: RuntimeFacts) -> None:
    """Every batch size a batch-size schedule reaches fits the training set and the replicas."""
    for size in schedules.batch_sizes(cfg.schedule, cfg.batch_size)[1:]:
        if facts.num_train is not None and size > facts.num_train:
            raise UsageError(f"schedule={cfg.schedule!r} reaches batch size {size}, larger than the training set "
                             f"({facts.num_train} examples of {cfg.dataset})")
        if facts.replicas is not None and size % facts.replicas:
            raise UsageError(f"schedule={cfg.schedule!r} reaches batch size {size}, not divisible by "
                             f"{facts.replicas} replicas")


def validate(cfg: TrainConfig, facts: RuntimeFacts | None = None) -> None:
    """Checks `cfg`, raising UsageError naming the bad value. Nothing is read or written.

    Called twice by bin/train: before anything else with `facts` None (names, ranges, and whatever the
    dataset's spec already tells), and again once the data is loaded and the devices are known, with the
    facts only those reveal (an npz file's shape and classes, the training-set size, the number of replicas).
    """
    facts = facts or RuntimeFacts()
    _check_names_and_ranges(cfg)
    _check_dataset_name(cfg, facts)
    shape = facts.input_shape if facts.input_shape is not None else DATASETS[cfg.dataset].input_shape
    if shape is None and cfg.dataset_label in DATASETS:  # an npz named like a known dataset: its shape
        shape = DATASETS[cfg.dataset_label].input_shape
    if shape is not None:
        _check_shape(cfg, shape)
    _check_name_settings(cfg)
    _check_stacked(cfg, facts.replicas if facts.replicas is not None else max(cfg.cpu_devices, 1))
    if facts.num_train is not None and cfg.batch_size > facts.num_train:
        raise UsageError(f"batch_size={cfg.batch_size} is larger than the training set ({facts.num_train} "
                         f"examples of {cfg.dataset})")
    _check_scheduled_batch_sizes(cfg, facts)
    if facts.num_train is not None:
        _check_step_budget(cfg, facts.num_train)
    if facts.replicas is not None and cfg.batch_size % facts.replicas:
        raise UsageError(f"batch_size={cfg.batch_size} is not divisible by {facts.replicas} replicas")


def settings(cfg: TrainConfig) -> dict:
    """The flag-keyed settings recorded in config.json."""
    return dataclasses.asdict(cfg)


def model_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The run settings `cfg.arch`'s builder takes (the MLP's), for lrbs_tf.models.builders.build_model."""
    return {name: getattr(cfg, name) for name in ARCHITECTURES[cfg.arch].options}


def identity_differences(recorded: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The identity settings in which `cfg` differs from a config.json's `recorded` settings, as text; a key
    an older config.json lacks counts as its default."""
    new = settings(cfg)
    return [f"{k}={recorded.get(k, DEFAULTS[k])!r} in config.json but {k}={new[k]!r} now"
            for k in IDENTITY_SETTINGS if recorded.get(k, DEFAULTS[k]) != new[k]]


def format_lr(lr: float) -> str:
    """A short, exact-enough text for a learning rate in run names: 0.05 -> '0.05', 1e-4 -> '0.0001'."""
    return f"{lr:.10g}"


# How the default run name carries a run's identity settings beyond its lead (arch, dataset, batch size, learning
# rate, seed): setting -> its tag. A setting in NAME_TAGS is appended as -<tag><value> whenever it differs from its
# default, so a run at the defaults keeps its name when a setting is added: adding a setting is one entry here
# (an identity setting in neither table is named the same way under its own name, e.g. -svag4, so names stay
# distinct even without an entry). Order: the order of this table, then the settings without an entry.
NAME_TAGS: dict[str, str] = {"momentum": "m", "weight_decay": "wd", "svag": "svag", "max_steps": "steps"}
# Identity settings that names never carried (the quick study's 128-wide MLP is mlp-mnist1d-bs32-lr0.06-s0):
# appended, default or not, only when the run's name_settings lists them (bin/sweep lists its --grid axes among
# these), so every existing run folder keeps its name. Bools read -<tag> / -no<tag>.
ASKED_TAGS: dict[str, str] = {"mlp_width": "w", "mlp_depth": "d", "mlp_batch_norm": "bn", "epochs": "ep",
                              "augment": "aug", "stop_at_train_loss": "stop", "mixed_precision": "mp",
                              "data_path": "data"}
# The identity settings the name opens with (dataset_name and the data source through the dataset's label).
NAME_LEADS = ("arch", "dataset", "dataset_name", "batch_size", "lr", "seed")


# Settings whose value needs its own file-name-safe form in a run name (the rest: name_part's rule).
NAME_FORMATS = {"schedule": lambda value: schedules.name_suffix(schedules.canonical(value))}


def name_part(setting: str, value: Any) -> str:
    """One setting's piece of a run name, e.g. '-wd0.0005', '-w128', '-bn', '-nobn', '-lrx0.2at10_20' (a
    schedule, runs/schedule.name_suffix); a text value must be a plain name (it becomes part of a folder name)."""
    if setting in NAME_FORMATS:
        return NAME_FORMATS[setting](value)
    tag = NAME_TAGS.get(setting) or ASKED_TAGS.get(setting) or setting
    if isinstance(value, bool):
        return f"-{tag}" if value else f"-no{tag}"
    if isinstance(value, float):
        return f"-{tag}{format_lr(value)}"
    if isinstance(value, str) and not _PLAIN_NAME.fullmatch(value):
        raise UsageError(f"{setting}={value!r} cannot go into a run name (letters, digits, . _ + - only)")
    return f"-{tag}{'none' if value is None else value}"


def _check_name_settings(cfg: TrainConfig) -> None:
    bad = [k for k in cfg.name_settings if k not in ASKED_TAGS]
    if bad:
        raise UsageError(f"name_settings holds {bad[0]!r}; valid: {', '.join(ASKED_TAGS)} (the others are "
                         "named whenever they differ from their default, or lead the name)")
    default_run_name(cfg)  # a text value that cannot be part of a folder name is refused here


def run_name(arch: str, dataset: str, batch_size: int, lr: float, seed: int,
             momentum: float = 0.0, weight_decay: float = 0.0, max_steps: int | None = None, *,
             name_settings: tuple[str, ...] = (), **settings: Any) -> str:
    """The default run name, e.g. 'vgg19-cifar10-bs64-lr0.05-s0' (+ '-m0.9', '-wd0.0005' when non-zero, and
    '-steps5000' for a step budget, so a grid at equal steps can share a workdir with its epoch-budget twin;
    every NAME_TAGS setting, and one without an entry, when not its default; the ASKED_TAGS settings that
    `name_settings` lists). `settings`: further identity settings by name. Runs of other epoch budgets or
    loss targets share names unless asked, and a folder of another configuration is refused."""
    values = {"momentum": momentum, "weight_decay": weight_decay, "max_steps": max_steps, **settings}
    name = f"{arch}-{dataset}-bs{batch_size}-lr{format_lr(lr)}-s{seed}"
    untagged = [k for k in values if k not in NAME_TAGS and k not in ASKED_TAGS and k not in NAME_LEADS]
    for key in (*NAME_TAGS, *untagged):
        if key in values and values[key] != DEFAULTS.get(key):
            name += name_part(key, values[key])
    for key in ASKED_TAGS:
        if key in name_settings:
            name += name_part(key, values.get(key, DEFAULTS[key]))
    return name


def default_run_name(cfg: TrainConfig) -> str:
    """`cfg`'s default run name: run_name of its identity settings and its name_settings."""
    others = {k: getattr(cfg, k) for k in IDENTITY_SETTINGS if k not in NAME_LEADS}
    return run_name(cfg.arch, cfg.dataset_label, cfg.batch_size, cfg.lr, cfg.seed,
                    name_settings=cfg.name_settings, **others)
