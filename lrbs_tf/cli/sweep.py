"""bin/sweep's command line: flag values -> SweepConfig (every check before anything runs) -> the scheduler."""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from lrbs_tf.cli.app import run_app
from lrbs_tf.sweep.config import config_from_flags
from lrbs_tf.sweep.scheduler import run


def _main(FLAGS: flags.FlagValues) -> int:
    return run(config_from_flags(FLAGS, os.environ))


def main(argv: Sequence[str] | None = None) -> None:
    """bin/sweep, `python -m lrbs_tf.sweep`, the lrbs-sweep console script (argv: default sys.argv)."""
    run_app("sweep", _main, argv)
