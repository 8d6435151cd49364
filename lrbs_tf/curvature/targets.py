"""What bin/sharpness measures: resolving --ckpt / --results into run folders and model files, and loading a
run's model and data with every check that can refuse them (one line, exit 2, nothing written).

TensorFlow and Keras are imported only inside the functions that load models.
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from lrbs_tf.core import provenance
from lrbs_tf.core.errors import RunFolderError, UsageError
from lrbs_tf.runs import folder as runfolder

if TYPE_CHECKING:
    import keras

    from lrbs_tf.data.loaders import Data

# The packages whose versions sharpness.json and interpolation.json record (beside Python's and the device).
RECORDED_PACKAGES = ("tensorflow", "keras", "numpy", "scipy")


def versions() -> dict:
    """The provenance sharpness.json and interpolation.json record: versions and the device measured on."""
    return {**provenance.versions(RECORDED_PACKAGES), "device": provenance.device()}


@dataclasses.dataclass
class Target:
    """A resolved --ckpt: the model file, where results go, and which data and weight decay apply."""
    model_path: Path
    out_dir: Path
    config: runfolder.RunConfig | None
    dataset: str
    data_dir: str | None
    data_path: str | None


def resolve_run_dir(run_dir: str | Path) -> runfolder.RunConfig:
    """Checks that `run_dir` is a finished, non-diverged run folder with a model; returns its config.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: no such run folder")
    if not (run_dir / runfolder.CONFIG).is_file():
        below = sum(1 for _ in runfolder.iter_run_dirs(run_dir))
        if below:  # a results folder (e.g. outputs/quick): --results measures what it holds
            raise RunFolderError(f"{run_dir} is not a run folder (no {runfolder.CONFIG}) but holds {below} below it: "
                                 f"to measure those, use --results={run_dir}")
        raise RunFolderError(f"{run_dir} is not a run folder (no {runfolder.CONFIG})")
    config = runfolder.read_config(run_dir)
    result = runfolder.read_result(run_dir)
    if result is None:
        raise RunFolderError(f"{run_dir} is unfinished (no {runfolder.RESULT}): nothing final to measure")
    if result.status == runfolder.STATUS_DIVERGED:
        raise RunFolderError(f"{run_dir} diverged (epoch {result.diverged_epoch}): its weights are not "
                             "finite, so it has no curvature to measure")
    if result.status != runfolder.STATUS_DONE:
        raise RunFolderError(f"{run_dir} has status {result.status!r} ({result.error or 'no error recorded'}); "
                             "only finished runs (status done) can be measured")
    if not (run_dir / runfolder.MODEL).is_file():
        raise RunFolderError(f"{run_dir} is finished but has no {runfolder.MODEL}")
    return config


def resolve_target(ckpt: str, dataset: str | None = None, data_dir: str | None = None,
                   data_path: str | None = None, out: str | None = None) -> Target:
    """--ckpt as a run folder (dataset from its config.json) or a .keras file (dataset given, else from a
    config.json beside it). `dataset` etc. are None when the user did not set them; for a run folder, a given
    --data_dir / --data_path replaces the recorded one (the data moved, or the run came from another machine),
    and a given --dataset must be the recorded one."""
    if not ckpt:
        raise UsageError("--ckpt is required: a run folder or a model.keras file (or use --interpolate)")
    path = Path(ckpt)
    if path.is_dir():
        config = resolve_run_dir(path)
        if dataset is not None and dataset not in (config.dataset, config.data_source):
            raise UsageError(f"--dataset={dataset} but {path} was trained on {config.dataset} (its config.json)")
        return Target(path / runfolder.MODEL, Path(out) if out else path, config, config.data_source,
                      data_dir if data_dir is not None else config.data_dir,
                      data_path if data_path is not None else config.data_path)
    if not path.exists():
        raise RunFolderError(f"--ckpt={ckpt}: no such run folder or model file")
    if path.suffix != ".keras":
        raise UsageError(f"--ckpt={ckpt} is neither a run folder nor a .keras model file")
    sibling = path.parent / runfolder.CONFIG
    config = runfolder.read_config(path.parent) if sibling.is_file() else None
    if dataset is None:
        if config is None:
            raise UsageError(f"--ckpt={ckpt} is a bare model file: say which data it was trained on with --dataset")
        dataset, data_dir, data_path = config.data_source, config.data_dir, config.data_path
    return Target(path, Path(out) if out else path.parent, config, dataset, data_dir, data_path)


def load_model(model_path: Path, config: runfolder.RunConfig | None) -> keras.Model:
    """Loads model.keras (compile=False) and checks it against config.json and for finite weights."""
    import keras

    from lrbs_tf.models.builders import count_trainable_params
    from lrbs_tf.runs.checkpoints import describe_keras_file

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as e:  # zip, h5 and deserialisation errors all mean the same thing to the user
        # Keras reports a damaged archive as "File not found"; say what is wrong with the file instead.
        problem = describe_keras_file(model_path)
        if problem is not None:
            raise RunFolderError(f"{model_path} {problem}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFolderError(f"{model_path} is unreadable as a Keras model: {first}") from None
    if config is not None:
        problems = []
        num_params = count_trainable_params(model)
        if not model.name.startswith(config.arch):
            problems.append(f"arch={config.arch!r} but the model is {model.name!r}")
        if config.num_params is not None and int(config.num_params) != num_params:
            problems.append(f"num_params={config.num_params} but the model has {num_params}")
        if config.input_shape is not None and list(config.input_shape) != list(model.input_shape[1:]):
            problems.append(f"input_shape={list(config.input_shape)} but the model takes "
                            f"{list(model.input_shape[1:])}")
        if config.num_classes is not None and int(config.num_classes) != int(model.output_shape[-1]):
            problems.append(f"num_classes={config.num_classes} but the model outputs {model.output_shape[-1]}")
        if problems:
            raise RunFolderError(f"{model_path} does not match its config.json: {'; '.join(problems)}")
    bad = [v.path for v in model.variables if not np.all(np.isfinite(np.asarray(v.value)))]
    if bad:
        raise RunFolderError(f"{model_path} has non-finite weights ({len(bad)} variables, first {bad[0]}): "
                             "a diverged model has no curvature to measure")
    return model


def load_checked_data(dataset: str, data_dir: str | None, data_path: str | None, model: keras.Model,
                      loaded: Data | None = None) -> Data:
    """Loads the dataset (or takes the `loaded` one) and checks that it fits the model (input shape, number
    of classes)."""
    from lrbs_tf.data.loaders import DataError, load_data

    try:
        data = loaded if loaded is not None else load_data(dataset, data_dir=data_dir, data_path=data_path)
    except DataError as e:
        raise UsageError(str(e)) from None
    if tuple(model.input_shape[1:]) != data.input_shape:
        raise UsageError(f"dataset {dataset} has inputs {data.input_shape} but the model takes "
                         f"{tuple(model.input_shape[1:])}")
    if int(model.output_shape[-1]) != data.num_classes:
        raise UsageError(f"dataset {dataset} has {data.num_classes} classes but the model outputs "
                         f"{model.output_shape[-1]}")
    return data


def first_examples(data, num_examples: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The first `num_examples` (0: all) examples of `split` in dataset order, normalised as training does,
    unaugmented: inputs (N, ...) float32 and labels (N,) int32."""
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if num_examples > len(x):
        raise UsageError(f"--num_examples={num_examples} but the {split} split of {data.name} has "
                         f"{len(x)} examples (0 = all)")
    n = num_examples or len(x)
    return data.normalize(x[:n]), y[:n].astype(np.int32)


def expand_ckpts(values: Sequence[str]) -> list[str]:
    """--ckpt's entries with globs expanded (sorted), each path once, in the order given."""
    out: list[str] = []
    for value in values:
        if glob.has_magic(value):
            matches = sorted(glob.glob(value))
            if not matches:
                raise UsageError(f"--ckpt={value} matches no run folder or model file")
        else:
            matches = [value]
        out += [m for m in matches if m not in out]
    return out


def sharpness_file(epoch: int | None) -> str:
    """The file bin/sharpness writes in a run folder: sharpness.json, or sharpness-epoch<E>.json with --epoch."""
    return runfolder.SHARPNESS if epoch is None else runfolder.SHARPNESS_AT_EPOCH.format(epoch=epoch)


def restore_epoch_weights(model: keras.Model, run_dir: Path, epoch: int) -> str:
    """Sets `model` (the run's model.keras, for its architecture) to the weights of epoch `epoch`'s
    checkpoint (lrbs_tf.runs.checkpoints.restore_epoch); returns the checkpoint's prefix. RunFolderError (exit 2)
    when that epoch was not kept, naming the epochs that were, or when it does not restore cleanly."""
    import tensorflow as tf

    from lrbs_tf.runs.checkpoints import restore_epoch

    found = restore_epoch(tf.train.Checkpoint(model=model), run_dir / runfolder.CKPT_DIR, epoch)
    bad = [v.path for v in model.variables if not np.all(np.isfinite(np.asarray(v.value)))]
    if bad:
        raise RunFolderError(f"{found.prefix} (epoch {epoch}) has non-finite weights ({len(bad)} variables, first "
                             f"{bad[0]}): nothing to measure")
    return str(found.prefix)


def is_current(run_dir: Path, settings, epoch: int | None = None) -> bool:
    """Whether the run's sharpness.json (with `epoch`, its sharpness-epoch<E>.json) was measured with these
    settings (every field of Settings) from the model.keras that is there now (not older than it)."""
    path = run_dir / sharpness_file(epoch)
    try:
        recorded = runfolder.read_json(path).get("settings") or {}
    except (runfolder.RunFolderError, AttributeError):
        return False
    wanted = {**dataclasses.asdict(settings), "quantities": list(settings.quantities)}
    if not settings.hvp_batch_size:  # 0 asks for the default, which sharpness.json records resolved
        wanted.pop("hvp_batch_size")
    # A setting added after a file was written is absent from it: that file was measured at its default.
    defaults = {**dataclasses.asdict(type(settings)()), "quantities": None}
    same = all(recorded.get(k, defaults.get(k)) == v for k, v in wanted.items())
    return same and path.stat().st_mtime >= (run_dir / runfolder.MODEL).stat().st_mtime


def results_targets(root: str, settings, epoch=None) -> tuple[list[str], int]:
    """--results=DIR: every finished run below DIR (status done, with model.keras) whose sharpness.json (with
    `epoch`, sharpness-epoch<E>.json) is not current for `settings`, and how many were current (left alone).
    `epoch` 'all' or a tuple of epochs (a trajectory): a run is to measure when one of those epochs it kept
    has no current file. Diverged, failed and unfinished runs have nothing to measure and are not listed."""
    from lrbs_tf.curvature import trajectory

    def current(run_dir: Path) -> bool:
        if epoch == trajectory.ALL or isinstance(epoch, tuple):
            kept = trajectory.kept_epochs(run_dir)
            wanted = kept if epoch == trajectory.ALL else [e for e in epoch if e in kept]
            return all(is_current(run_dir, settings, e) for e in wanted)
        return is_current(run_dir, settings, epoch)

    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"--results={root} is not a folder")
    todo, n_current = [], 0
    for run_dir in runfolder.iter_run_dirs(path):
        if runfolder.run_status(run_dir) != runfolder.STATUS_DONE or not (run_dir / runfolder.MODEL).is_file():
            continue
        if current(run_dir):
            n_current += 1
        else:
            todo.append(str(run_dir))
    return todo, n_current
