"""bin/train's command line: flag values -> TrainConfig -> lrbs_tf.training.run (or the --dry_run summary)."""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from lrbs_tf.cli.app import run_app
from lrbs_tf.core.resources import quiet_import_tensorflow
from lrbs_tf.runs import folder as runfolder
from lrbs_tf.runs.config import TrainConfig, TrainingFailed, UsageError, validate
from lrbs_tf.training.run import dry_run, run_column


def parse_lrs(values: Sequence[str]) -> list[float]:
    """--lr=0.01,0.02 -> [0.01, 0.02], naming the entry that is not a number."""
    lrs = []
    for v in values:
        try:
            lrs.append(float(v))
        except ValueError:
            raise UsageError(f"lr={v!r} is not a number") from None
    return lrs


def _main(FLAGS: flags.FlagValues) -> int:
    lrs = parse_lrs(FLAGS.lr)
    cfg = TrainConfig.from_flags(FLAGS, lr=lrs[0] if lrs else 0.0)
    if FLAGS.dry_run:
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


def main(argv: Sequence[str] | None = None) -> None:
    """bin/train, `python -m lrbs_tf.train`, the lrbs-train console script (argv: default sys.argv)."""
    run_app("train", _main, argv)

