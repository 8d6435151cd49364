"""bin/sharpness's command line: flag values -> Settings and targets -> lrbs_tf.curvature.session (or the
loss along the line between two runs, lrbs_tf.curvature.interpolation)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import flags

from lrbs_tf.cli.app import run_app
from lrbs_tf.core.errors import LOCKED_EXIT, UsageError
from lrbs_tf.core.resources import quiet_import_tensorflow
from lrbs_tf.core.text import plural
from lrbs_tf.curvature import trajectory
from lrbs_tf.curvature.session import check_epoch, run, run_many, run_trajectory
from lrbs_tf.curvature.settings import INTERP_BATCH, Settings
from lrbs_tf.curvature.targets import expand_ckpts, resolve_run_dir, resolve_target, results_targets
from lrbs_tf.runs import folder as runfolder, locking


def _targets(flag_values, settings: Settings, epochs: trajectory.EpochSpec) -> tuple[list[str], bool]:
    """The runs to measure from --ckpt or --results, and whether the user named exactly one (the single-run
    contract: any problem is bad input, exit 2)."""
    if flag_values.results and flag_values.ckpt:
        raise UsageError(f"--ckpt and --results={flag_values.results}: give one")
    if flag_values.results:
        todo, current = results_targets(flag_values.results, settings, epochs)
        what = "sharpness-epoch<E>.json for every epoch asked" if epochs is not None else runfolder.SHARPNESS
        print(f"sharpness: {flag_values.results}: {plural(len(todo), 'finished run')} to measure, {current} "
              f"with a current {what} left alone", flush=True)
        return todo, False
    if not flag_values.ckpt:
        raise UsageError("--ckpt is required: a run folder or a model.keras file, several (a comma list or "
                         "globs), or --results=DIR (or use --interpolate)")
    ckpts = expand_ckpts(flag_values.ckpt)
    return ckpts, len(flag_values.ckpt) == 1 and ckpts == list(flag_values.ckpt)


def _interpolate(FLAGS: flags.FlagValues) -> int:
    if FLAGS.ckpt or FLAGS.results or FLAGS.epoch is not None:
        raise UsageError(f"--ckpt/--results/--epoch and --interpolate={','.join(FLAGS.interpolate)}: give one "
                         "(curvature of runs, or the line between two runs)")
    if len(FLAGS.interpolate) != 2:
        raise UsageError(f"--interpolate={','.join(FLAGS.interpolate)}: give exactly two run folders, RUN_A,RUN_B")
    for run_dir in FLAGS.interpolate:  # before TensorFlow loads: a wrong path is refused in a second
        resolve_run_dir(run_dir)
    _import_tensorflow()
    from lrbs_tf.curvature.interpolation import interpolate, parse_alphas

    interpolate(FLAGS.interpolate[0], FLAGS.interpolate[1], FLAGS.out, parse_alphas(FLAGS.alpha_range),
                num_examples=FLAGS.num_examples,
                batch_size=FLAGS.hvp_batch_size or INTERP_BATCH, bn_stats=FLAGS.interp_bn_stats)
    return 0


def _import_tensorflow() -> None:
    quiet_import_tensorflow()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # vectorized_map's per-op fallback notices are not for the user


def _main(FLAGS: flags.FlagValues) -> int:
    # Every check that needs neither data nor TensorFlow comes first (flags, paths, the run folder's
    # configuration): bad input is refused in about a second (benchmarks/refusal.md).
    if FLAGS.interpolate:
        return _interpolate(FLAGS)
    settings = Settings(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(Settings)})
    settings.quantities = tuple(settings.quantities)
    settings.validate()
    given = {name: getattr(FLAGS, name) if FLAGS[name].present else None
             for name in ("dataset", "data_dir", "data_path")}
    epochs = trajectory.parse_epochs(FLAGS.epoch)
    ckpts, single = _targets(FLAGS, settings, epochs)
    if FLAGS.out and epochs is not None and (epochs == trajectory.ALL or len(epochs) > 1):
        raise UsageError(f"--out={FLAGS.out} with --epoch={','.join(FLAGS.epoch)}: a trajectory is written into "
                         "its run folder (--out takes one epoch's file)")
    if single:
        resolve_target(ckpts[0], out=FLAGS.out, **given)
        one_epoch = epochs is None or FLAGS.out  # --out: one epoch's file elsewhere, as before trajectories
        if one_epoch:
            check_epoch(ckpts[0], epochs[0] if epochs else None)
        _import_tensorflow()
        if one_epoch:
            run(ckpts[0], settings, out=FLAGS.out, epoch=epochs[0] if epochs else None, **given)
        else:
            run_trajectory(ckpts[0], settings, epochs, **given)
        return 0
    if FLAGS.out:
        raise UsageError(f"--out={FLAGS.out} names one run's output folder; with several runs each writes "
                         "into its own run folder")
    if not ckpts:
        return 0  # --results with nothing left to measure (it said so)
    _import_tensorflow()
    _, failures = run_many(ckpts, settings, epoch=epochs, **given)
    if failures and all(locking.is_locked(c) for c, _ in failures):
        return LOCKED_EXIT  # held by other processes, as bin/train's exit status says: not failures
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> None:
    """bin/sharpness, `python -m lrbs_tf.sharpness`, the lrbs-sharpness console script (argv: default
    sys.argv)."""
    run_app("sharpness", _main, argv)
