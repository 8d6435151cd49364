"""bin/correlate's command line: flag values -> lrbs_tf.analysis.correlate.run, and its one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from absl import flags

from lrbs_tf.analysis.correlate import REPORT_FILE, run
from lrbs_tf.cli.app import run_app
from lrbs_tf.core.errors import UsageError


def _main(FLAGS: flags.FlagValues) -> int:
    if not FLAGS.results:
        raise UsageError("--results is required: the folder holding the run folders to analyse")
    analysis = run(results=FLAGS.results, out=FLAGS.out, min_train_accuracy=FLAGS.min_train_accuracy,
                   alpha=FLAGS.alpha, group_by=list(FLAGS.group_by), figures=FLAGS.figures,
                   target_train_loss=FLAGS.target_train_loss, target_test_accuracy=FLAGS.target_test_accuracy)
    counts = analysis.runs["status"].value_counts()
    out = Path(FLAGS.out) if FLAGS.out else analysis.results / "correlate"
    fams = analysis.families[analysis.families["statistic"].isin(["spearman_p", "p_ratio", "p_permutation"])]
    print(f"correlate: {len(analysis.runs)} run folders ("
          + ", ".join(f"{counts[s]} {s}" for s in counts.index)
          + f"), {len(analysis.labels)} groups, {int(fams['tests'].sum())} tests in {len(fams)} families; "
          f"wrote {out / REPORT_FILE}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """bin/correlate, `python -m lrbs_tf.correlate`, the lrbs-correlate console script (argv: default
    sys.argv)."""
    run_app("correlate", _main, argv)


