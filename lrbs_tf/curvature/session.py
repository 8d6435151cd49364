"""bin/sharpness: the curvature of trained runs, and the loss along the line between two runs.

    bin/sharpness --ckpt=outputs/<run>                       # -> outputs/<run>/sharpness.json + spectrum plot
    bin/sharpness --ckpt='outputs/quick/mlp-*'               # several runs (a comma list or globs), one process
    bin/sharpness --results=outputs/quick                    # every finished run there without a current one
    bin/sharpness --ckpt=path/model.keras --dataset=cifar10  # a bare model file
    bin/sharpness --ckpt=outputs/<run> --epoch=2             # at epoch 2's checkpoint -> sharpness-epoch2.json
    bin/sharpness --ckpt=outputs/<run> --epoch=all           # every kept checkpoint, one process -> curvature.csv
    bin/sharpness --results=outputs/grid --epoch=all         # a whole grid's trajectories in one process
    bin/sharpness --interpolate=outputs/<a>,outputs/<b> --out=DIR   # -> DIR/interpolation.csv + plot

The run folder's config.json says which model and data to use, so those flags are not repeated. Every
input is checked before anything is computed, and files are written only at the end, atomically; bad input
is one line on stderr and exit status 2 with nothing written. With several runs, one run's failure (a bad
folder, non-finite weights) is reported on one line and skipped, the others are measured, and the exit
status is 1 if any failed. Measuring many runs in one process loads each dataset once and traces once per
architecture (`Session`), and gives the numbers separate processes give. docs/curvature.md defines each
quantity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from lrbs_tf.core.errors import RunFolderError, UsageError
from lrbs_tf.core.text import plural
from lrbs_tf.curvature import trajectory  # TF-free
from lrbs_tf.curvature.measure import measure  # TF-free until measure() runs
from lrbs_tf.curvature.settings import DEFAULT_HVP_BATCH, Settings
from lrbs_tf.curvature.targets import (
    Target,
    first_examples,
    is_current,
    load_checked_data,
    load_model,
    resolve_run_dir,
    resolve_target,
    restore_epoch_weights,
    sharpness_file,
    versions,
)
from lrbs_tf.runs import folder as runfolder, locking
from lrbs_tf.theory.ou import stability_ratio

if TYPE_CHECKING:
    import keras

    from lrbs_tf.data.loaders import Data

__all__ = ["Session", "Settings", "Target", "UsageError", "resolve_run_dir", "resolve_target", "run", "run_many",
           "run_trajectory"]

SPECTRUM_STEM = "hessian_spectrum"      # + .png / .pdf, next to sharpness.json


def architecture_key(model: keras.Model) -> str:
    """What makes two models the same computation: every layer's class and configuration (its name aside:
    the members of one column get different automatic names) and the input shape."""
    layers = [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
              for layer in model.layers]
    return json.dumps([list(model.input_shape[1:]), layers], sort_keys=True, default=str)


@dataclasses.dataclass
class Session:
    """What measuring several runs in one process shares: each dataset, loaded once; one model per
    architecture, into which each run's (checked) weights are set, so the functions traced on it (the HVP,
    the loss, the evaluator) are traced once per architecture; and those traces. One Session per process."""
    data: dict = dataclasses.field(default_factory=dict)      # (dataset, data_dir, data_path) -> Data
    models: dict = dataclasses.field(default_factory=dict)    # architecture_key -> (model, traces)
    loaded: dict = dataclasses.field(default_factory=dict)    # (model.keras, mtime) -> its model (the latest)

    def load_data(self, target: Target, model: keras.Model) -> Data:
        key = (target.dataset, target.data_dir, target.data_path)
        if key not in self.data:
            self.data[key] = load_checked_data(*key, model)
        else:
            load_checked_data(*key, model, loaded=self.data[key])  # the checks alone
        return self.data[key]

    def load_model(self, target: Target) -> keras.Model:
        """The run's checked model.keras, loaded once for all its epochs (a trajectory restores each epoch into
        it). Only the latest run's is kept: a grid of large models would otherwise hold every one."""
        key = (str(target.model_path), target.model_path.stat().st_mtime_ns)
        if key not in self.loaded:
            self.loaded = {key: load_model(target.model_path, target.config)}
        return self.loaded[key]

    def model_for(self, model: keras.Model) -> tuple[keras.Model, dict]:
        """The session's model of `model`'s architecture holding `model`'s weights, and its traces."""
        key = architecture_key(model)
        if key not in self.models:
            self.models[key] = (model, {})
        else:
            self.models[key][0].set_weights(model.get_weights())
        return self.models[key]


def check_epoch(ckpt: str, epoch: int | None) -> None:
    if epoch is None:
        return
    if epoch < 1:
        raise UsageError(f"--epoch={epoch} is not an epoch (the first is 1)")
    if not os.path.isdir(ckpt):
        raise UsageError(f"--epoch={epoch} needs a run folder (its {runfolder.CKPT_DIR}/ holds the epochs' "
                         f"checkpoints), not the model file {ckpt}")


def run(ckpt: str, settings: Settings, dataset: str | None = None, data_dir: str | None = None,
        data_path: str | None = None, out: str | None = None, log=print, session: Session | None = None,
        epoch: int | None = None) -> dict:
    """Measures the run (or model file) `ckpt` and writes sharpness.json and the spectrum plot; with `epoch`,
    the run at that epoch's checkpoint into sharpness-epoch<E>.json and hessian_spectrum-epoch<E>.* (no
    TensorBoard scalars; sharpness.json is not touched).

    `dataset`, `data_dir`, `data_path`: None when not given; for a run folder a given data location replaces
    the recorded one. `session` shares data and traces with other runs measured in this process. Returns
    what was written.
    """
    from lrbs_tf.curvature.plots import plot_spectrum

    settings.validate()
    target = resolve_target(ckpt, dataset, data_dir, data_path, out)
    check_epoch(ckpt, epoch)
    session = session or Session()
    model = load_model(target.model_path, target.config) if epoch is None else session.load_model(target)
    checkpoint = str(target.model_path) if epoch is None else restore_epoch_weights(model, Path(ckpt), epoch)
    from lrbs_tf.models.builders import count_trainable_params
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
    data = session.load_data(target, model)
    model, traces = session.model_for(model)
    x, y = first_examples(data, settings.num_examples)
    keep: dict = {}
    fields, spectrum = measure(model, x, y, settings, weight_decay, batch_size, log=log, traces=traces,
                               train_batch_size=target.config.batch_size if target.config else None, keep=keep)
    record = {**fields,
              "settings": {**dataclasses.asdict(settings), "quantities": list(settings.quantities),
                           "hvp_batch_size": batch_size, "weight_decay": weight_decay if
                           settings.include_weight_decay else 0.0},
              "checkpoint": checkpoint, "epoch": epoch, "dataset": target.dataset,
              "run_config": {k: target.config.raw.get(k) for k in
                             ("arch", "dataset", "batch_size", "lr", "seed", "momentum", "weight_decay", "epochs")}
              if target.config else None,
              "versions": versions()}
    record["stability_ratio"] = (stability_ratio(fields["lambda_max"], target.config.lr)
                                 if fields["lambda_max"] is not None and target.config is not None else None)
    record["batch_sharpness_ratio"] = (stability_ratio(fields["batch_sharpness"], target.config.lr)
                                       if fields["batch_sharpness"] is not None and target.config is not None
                                       else None)
    # One writer per run folder: bin/train may be writing it (a rerun of a failed run), or another
    # bin/sharpness; the lock is held only while the files are written (lrbs_tf.runs.locking).
    in_run = (target.out_dir / runfolder.CONFIG).is_file()
    with locking.RunLock(target.out_dir, "bin/sharpness") if in_run else contextlib.nullcontext():
        if spectrum is not None:
            grid, sigma = spectrum.default_grid()
            title = f"{target.model_path.parent.name}: N={fields['num_examples']}, BN {settings.bn_mode}"
            stem = SPECTRUM_STEM if epoch is None else f"{SPECTRUM_STEM}-epoch{epoch}"
            plot_spectrum(grid, spectrum.density(grid, sigma), sigma, target.out_dir / stem,
                          fields["top_eigenvalues"] or (), title=title + ("" if epoch is None else f", epoch {epoch}"))
        path = target.out_dir / sharpness_file(epoch)
        if epoch is not None and "eigenvectors" in keep:  # the eigenspace overlap of a trajectory needs them
            trajectory.save_eigenvectors(target.out_dir, epoch, keep["eigenvectors"])
        elif epoch is not None:  # an older measurement's vectors would not belong to the new epoch file
            (target.out_dir / trajectory.eigenvectors_file(epoch)).unlink(missing_ok=True)
        runfolder.atomic_write_json(path, record)
        if epoch is None and target.config is not None and in_run:
            from lrbs_tf.runs.tensorboard import write_sharpness  # the run's TensorBoard session shows its curvature

            write_sharpness(target.out_dir, record)
    log(f"wrote {path}: lambda_max={fields['lambda_max']}, "
        f"trace={fields['trace']}, {fields['num_hvps']} HVPs, {fields['seconds']:.1f} s")
    return record


def run_trajectory(ckpt: str, settings: Settings, epochs: trajectory.EpochSpec = trajectory.ALL,
                   dataset: str | None = None, data_dir: str | None = None, data_path: str | None = None,
                   log=print, session: Session | None = None, skip_current: bool = False) -> list[dict]:
    """Measures run folder `ckpt` at each epoch of `epochs` ('all': every kept checkpoint; or a tuple) in
    this process (data loaded once, traced once: `Session`), each into sharpness-epoch<E>.json, then writes
    the run's curvature.csv from every epoch file there (curvature.trajectory). skip_current: leave epochs
    whose file is current for these settings (--results). Listed epochs that were not kept are refused
    before anything is measured. An epoch that fails while measuring does not cost the others: they are
    measured, curvature.csv is written, then RunFolderError names the failed epochs."""
    settings.validate()
    if not os.path.isdir(ckpt):
        raise UsageError(f"--epoch needs a run folder (its {runfolder.CKPT_DIR}/ holds the epochs' checkpoints), "
                         f"not the model file {ckpt}")
    resolve_run_dir(ckpt)
    todo = trajectory.epochs_to_measure(ckpt, epochs)
    if skip_current:
        todo = [e for e in todo if not is_current(Path(ckpt), settings, e)]
    session = session or Session()
    records, failed = [], []
    for i, epoch in enumerate(todo):
        log(f"epoch {epoch} ({i + 1}/{len(todo)}) of {ckpt}")
        try:
            records.append(run(ckpt, settings, dataset, data_dir, data_path, log=log, session=session, epoch=epoch))
        except (UsageError, RunFolderError) as e:
            failed.append(f"epoch {epoch}: {e}")
        except Exception as e:  # one epoch's failure must not cost the others theirs
            failed.append(f"epoch {epoch}: {type(e).__name__}: {e}")
    with locking.RunLock(Path(ckpt), "bin/sharpness"):  # one writer per run folder (runs/locking)
        path = trajectory.write_curvature_csv(ckpt)
    log(f"wrote {path} ({plural(len(records), 'epoch')} measured now)" if path else f"{ckpt}: no epoch measured")
    if failed:
        raise RunFolderError(f"{ckpt}: {len(failed)} of {plural(len(todo), 'epoch')} failed ({'; '.join(failed)})")
    return records


def run_many(ckpts: Sequence[str], settings: Settings, dataset: str | None = None, data_dir: str | None = None,
             data_path: str | None = None, log=print, epoch: int | trajectory.EpochSpec = None
             ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Measures every run of `ckpts` in this process (see `Session`), each into its own sharpness.json (with
    `epoch`: each at that epoch's checkpoint, into sharpness-epoch<E>.json; a run without it fails alone).

    A run that cannot be measured (bad folder, unfinished, diverged, non-finite weights, or an error while
    measuring) is reported as one line and skipped. Returns (the records written, [(ckpt, why) failed]).
    `epoch` 'all' or a tuple: each run's trajectory (run_trajectory; epochs already current are left).
    """
    many = epoch == trajectory.ALL or isinstance(epoch, tuple)
    settings.validate()
    session = Session()
    records, failures = [], []
    for i, ckpt in enumerate(ckpts):
        log(f"[{i + 1}/{len(ckpts)}] {ckpt}")
        try:
            if many:
                records += run_trajectory(ckpt, settings, epoch, dataset, data_dir, data_path, log=log,
                                          session=session, skip_current=True)
            else:
                records.append(run(ckpt, settings, dataset, data_dir, data_path, log=log, session=session,
                                   epoch=epoch))
        except (UsageError, RunFolderError) as e:
            failures.append((ckpt, str(e)))
        except Exception as e:  # a failure while measuring one run must not cost the others theirs
            failures.append((ckpt, f"{type(e).__name__}: {e}"))
        if failures and failures[-1][0] == ckpt:
            print(f"sharpness: error: {ckpt}: {failures[-1][1]}", file=sys.stderr, flush=True)
    log(f"measured {len(ckpts) - len(failures)} of {plural(len(ckpts), 'run')}"
        + (f" ({plural(len(records), 'epoch')})" if many else "") + (f"; {len(failures)} failed: "
                                                             f"{', '.join(c for c, _ in failures)}" if failures else ""))
    return records, failures
