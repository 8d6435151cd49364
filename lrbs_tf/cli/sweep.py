"""bin/sweep's command line: flag values -> SweepConfig (every check before anything runs) -> the scheduler."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from absl import flags

from lrbs_tf.cli.app import run_app
from lrbs_tf.cli.flags import binary_flags
from lrbs_tf.core.errors import UsageError
from lrbs_tf.sweep.config import SweepConfig, config_from_flags, measurement_passes, sharpness_weight
from lrbs_tf.sweep.scheduler import run


def _priced(cfg: SweepConfig) -> SweepConfig:
    """The sweep's configuration with its --sharpness_flags checked as bin/sharpness reads them (bad ones
    refused now, not after training) and one measurement priced from the quantities they ask for."""
    if not cfg.sharpness:
        return cfg
    values = binary_flags("sharpness").values
    try:
        values(["sharpness", *cfg.sharpness_args])
    except flags.Error as e:
        raise UsageError(f"--sharpness_flags: {e}") from None
    settings = {n: getattr(values, n) for n in ("top_k", "max_hvps", "max_probes", "slq_steps", "slq_runs",
                                                "eps_steps", "noise_draws", "adaptive_steps", "adaptive_restarts",
                                                "adaptive_draws")}
    passes = measurement_passes(list(values.quantities), **settings)
    return dataclasses.replace(cfg, sharpness_weight=sharpness_weight(passes, values.num_examples, cfg.grid))


def _main(FLAGS: flags.FlagValues) -> int:
    return run(_priced(config_from_flags(FLAGS, os.environ)))


def main(argv: Sequence[str] | None = None) -> None:
    """bin/sweep, `python -m lrbs_tf.sweep`, the lrbs-sweep console script (argv: default sys.argv)."""
    run_app("sweep", _main, argv)
