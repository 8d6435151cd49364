"""bin/sharpness: the curvature of a trained run, and the loss along the line between two runs.

    bin/sharpness --ckpt=outputs/<run>                       # -> outputs/<run>/sharpness.json + spectrum plot
    bin/sharpness --ckpt=path/model.keras --dataset=cifar10  # a bare model file
    bin/sharpness --interpolate=outputs/<a>,outputs/<b> --out=DIR   # -> DIR/interpolation.csv + plot

The run folder's config.json says which model and data to use, so those flags are not repeated. Every
input is checked before anything is computed, and files are written only at the end, atomically; bad input
is one line on stderr and exit status 2 with nothing written. docs/curvature.md defines each quantity.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from lrbs_tf import provenance, runfolder
from lrbs_tf.cli import quiet_import_tensorflow, run_app
from lrbs_tf.curvature.measure import measure  # TF-free until measure() runs
from lrbs_tf.curvature.settings import DEFAULT_HVP_BATCH, INTERP_BN_STATS, Settings
from lrbs_tf.errors import RunFolderError, UsageError

if TYPE_CHECKING:
    import keras

    from lrbs_tf.data import Data

SPECTRUM_STEM = "hessian_spectrum"      # + .png / .pdf, next to sharpness.json
INTERPOLATION_CSV = "interpolation.csv"
INTERPOLATION_JSON = "interpolation.json"
INTERPOLATION_STEM = "interpolation"   # + .png / .pdf


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
        if dataset is not None and dataset != config.dataset:
            raise UsageError(f"--dataset={dataset} but {path} was trained on {config.dataset} (its config.json)")
        return Target(path / runfolder.MODEL, Path(out) if out else path, config, config.dataset,
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
        dataset, data_dir, data_path = config.dataset, config.data_dir, config.data_path
    return Target(path, Path(out) if out else path.parent, config, dataset, data_dir, data_path)


def load_model(model_path: Path, config: runfolder.RunConfig | None) -> keras.Model:
    """Loads model.keras (compile=False) and checks it against config.json and for finite weights."""
    import keras

    from lrbs_tf.checkpoints import describe_keras_file
    from lrbs_tf.models import count_trainable_params

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


def load_checked_data(dataset: str, data_dir: str | None, data_path: str | None, model: keras.Model) -> Data:
    """Loads the dataset and checks that it fits the model (input shape, number of classes)."""
    from lrbs_tf.data import DataError, load_data

    try:
        data = load_data(dataset, data_dir=data_dir, data_path=data_path)
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


# The packages whose versions sharpness.json and interpolation.json record (beside Python's and the device).
RECORDED_PACKAGES = ("tensorflow", "keras", "numpy", "scipy")


def _versions() -> dict:
    return {**provenance.versions(RECORDED_PACKAGES), "device": provenance.device()}


def run(ckpt: str, settings: Settings, dataset: str | None = None, data_dir: str | None = None,
        data_path: str | None = None, out: str | None = None, log=print) -> dict:
    """Measures the run (or model file) `ckpt` and writes sharpness.json and the spectrum plot.

    `dataset`, `data_dir`, `data_path` are only used for a .keras file (None: not given). Returns what
    was written to sharpness.json.
    """
    from lrbs_tf.curvature.plotting import plot_spectrum

    settings.validate()
    target = resolve_target(ckpt, dataset, data_dir, data_path, out)
    model = load_model(target.model_path, target.config)
    from lrbs_tf.models import count_trainable_params

    num_params = count_trainable_params(model)
    if settings.top_k > num_params:
        raise UsageError(f"--top_k={settings.top_k} is more than the model's {num_params} parameters")
    weight_decay = target.config.weight_decay if target.config is not None else 0.0
    if settings.include_weight_decay and target.config is None:
        raise UsageError("--include_weight_decay needs the run's config.json (weight_decay); "
                         f"{target.model_path} has none beside it")
    batch_size = settings.hvp_batch_size or (
        target.config.batch_size if settings.bn_mode == "batch" and target.config is not None
        else DEFAULT_HVP_BATCH)
    data = load_checked_data(target.dataset, target.data_dir, target.data_path, model)
    x, y = first_examples(data, settings.num_examples)
    fields, spectrum = measure(model, x, y, settings, weight_decay, batch_size, log=log)
    record = {**fields,
              "settings": {**dataclasses.asdict(settings), "quantities": list(settings.quantities),
                           "hvp_batch_size": batch_size, "weight_decay": weight_decay if
                           settings.include_weight_decay else 0.0},
              "checkpoint": str(target.model_path), "dataset": target.dataset,
              "run_config": {k: target.config.raw.get(k) for k in
                             ("arch", "dataset", "batch_size", "lr", "seed", "momentum", "weight_decay", "epochs")}
              if target.config else None,
              "versions": _versions()}
    if spectrum is not None:
        grid, sigma = spectrum.default_grid()
        title = f"{target.model_path.parent.name}: N={fields['num_examples']}, BN {settings.bn_mode}"
        plot_spectrum(grid, spectrum.density(grid, sigma), sigma, target.out_dir / SPECTRUM_STEM,
                      fields["top_eigenvalues"] or (), title=title)
    runfolder.atomic_write_json(target.out_dir / runfolder.SHARPNESS, record)
    log(f"wrote {target.out_dir / runfolder.SHARPNESS}: lambda_max={fields['lambda_max']}, "
        f"trace={fields['trace']}, {fields['num_hvps']} HVPs, {fields['seconds']:.1f} s")
    return record


def parse_alphas(alpha_range: Sequence[str]) -> list[float]:
    """START,STOP,NUM -> sorted linspace with 0 and 1 added (each model's own point is always measured)."""
    try:
        start, stop, num = float(alpha_range[0]), float(alpha_range[1]), int(alpha_range[2])
    except (ValueError, IndexError, TypeError):
        raise UsageError(f"--alpha_range={','.join(map(str, alpha_range))} is not START,STOP,NUM") from None
    if len(alpha_range) != 3 or num < 2 or not stop > start:
        raise UsageError(f"--alpha_range={','.join(map(str, alpha_range))}: need START < STOP and NUM >= 2")
    grid = np.round(np.linspace(start, stop, num), 10)
    return sorted(set(float(a) for a in grid) | {0.0, 1.0})


def interpolate(run_a: str, run_b: str, out: str, alphas: Sequence[float], num_examples: int = 2048,
                batch_size: int = 1000, bn_stats: str = "interpolate", log=print) -> list[dict]:
    """Loss and accuracy along (1 - alpha) theta_a + alpha theta_b, on the first num_examples training
    examples and the first min(num_examples, test size) test examples (0 = all), in chunks of batch_size.
    Writes out/interpolation.csv, out/interpolation.json and the plot; returns the rows."""
    from lrbs_tf.curvature.hvp import make_batches
    from lrbs_tf.curvature.interpolate import check_same_architecture, interpolation_curve
    from lrbs_tf.curvature.plotting import plot_interpolation

    if not out:
        raise UsageError("--interpolate needs --out=DIR for the curve")
    if bn_stats not in INTERP_BN_STATS:
        raise UsageError(f"--interp_bn_stats={bn_stats}; valid: {', '.join(INTERP_BN_STATS)}")
    if num_examples < 0 or batch_size < 1:
        raise UsageError(f"--num_examples={num_examples} must be >= 0 and the batch size {batch_size} >= 1")
    configs = [resolve_run_dir(r) for r in (run_a, run_b)]
    for key in ("arch", "dataset", "num_params"):
        if configs[0].raw.get(key) != configs[1].raw.get(key):
            raise UsageError(f"{run_a} and {run_b} differ in {key}: {configs[0].raw.get(key)!r} vs "
                             f"{configs[1].raw.get(key)!r}; interpolation needs the same model on the same data")
    models = [load_model(Path(r) / runfolder.MODEL, c) for r, c in zip((run_a, run_b), configs)]
    try:
        check_same_architecture(*models)
    except ValueError as e:
        raise UsageError(f"{run_a} and {run_b}: {e}") from None
    c = configs[0]
    data = load_checked_data(c.dataset, c.data_dir, c.data_path, models[0])
    train = first_examples(data, num_examples)
    test = first_examples(data, min(num_examples, len(data.y_test)), split="test")
    start = time.perf_counter()
    rows = interpolation_curve(models[0], models[1], alphas, make_batches(*train, batch_size),
                               make_batches(*test, batch_size), bn_stats=bn_stats)
    out_dir = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["alpha", "train_loss", "train_accuracy", "test_loss", "test_accuracy"],
                            lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: repr(float(v)) for k, v in r.items()})
    plot_interpolation(rows, out_dir / INTERPOLATION_STEM, Path(run_a).name, Path(run_b).name)
    runfolder.atomic_write_json(out_dir / INTERPOLATION_JSON, {
        "run_a": str(run_a), "run_b": str(run_b), "alphas": list(alphas), "num_train_examples": len(train[1]),
        "num_test_examples": len(test[1]), "bn_stats": bn_stats, "seconds": time.perf_counter() - start,
        "rows": rows, "versions": _versions()})
    runfolder.atomic_write_text(out_dir / INTERPOLATION_CSV, buf.getvalue())
    log(f"wrote {out_dir / INTERPOLATION_CSV}: {len(rows)} alphas from {alphas[0]} to {alphas[-1]}")
    return rows


def _main(argv: Sequence[str]) -> int:
    quiet_import_tensorflow()
    import tensorflow as tf

    from lrbs_tf.flags import FLAGS

    tf.get_logger().setLevel("ERROR")  # vectorized_map's per-op fallback notices are not for the user
    if FLAGS.interpolate:
        if FLAGS.ckpt:
            raise UsageError(f"--ckpt={FLAGS.ckpt} and --interpolate: give one (curvature of a run, or the line "
                             "between two runs)")
        if len(FLAGS.interpolate) != 2:
            raise UsageError(f"--interpolate={','.join(FLAGS.interpolate)}: give exactly two run folders, RUN_A,RUN_B")
        interpolate(FLAGS.interpolate[0], FLAGS.interpolate[1], FLAGS.out, parse_alphas(FLAGS.alpha_range),
                    num_examples=FLAGS.num_examples,
                    batch_size=FLAGS.hvp_batch_size or 1000, bn_stats=FLAGS.interp_bn_stats)
        return 0
    settings = Settings(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(Settings)})
    settings.quantities = tuple(settings.quantities)
    given = {name: getattr(FLAGS, name) if FLAGS[name].present else None
             for name in ("dataset", "data_dir", "data_path")}
    run(FLAGS.ckpt, settings, out=FLAGS.out, **given)
    return 0


def main() -> None:
    from lrbs_tf import flags

    flags.define_sharpness_flags()
    run_app(_main)
