"""bin/correlate's command line: flag values -> lrbs_tf.analysis.correlate.run, and its one-line summary."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from absl import flags

from lrbs_tf.cli.app import run_app
from lrbs_tf.core.errors import UsageError
from lrbs_tf.runs import folder as runfolder


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 group', '2 groups' (many: the plural when it is not word + 's')."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def _check_paths(results: str | None) -> None:
    """The checks that need neither pandas nor the runs, before the analysis is imported (about a second)."""
    if not results:
        raise UsageError("--results is required: the folder holding the run folders to analyse")
    path = Path(results)
    if not path.exists():
        raise UsageError(f"--results={results} does not exist")
    if not path.is_dir():
        raise UsageError(f"--results={results} is not a folder")


def _main(FLAGS: flags.FlagValues) -> int:
    _check_paths(FLAGS.results)
    out = Path(FLAGS.out) if FLAGS.out else Path(FLAGS.results) / "correlate"
    if not FLAGS.out and (Path(FLAGS.results) / runfolder.CONFIG).is_file():
        print(f"correlate: note: --results={FLAGS.results} is a single run folder; the analysis goes to {out} "
              "inside it (--out=DIR to choose another folder)", flush=True)
    from lrbs_tf.analysis.correlate import REPORT_FILE, run  # pandas, scipy: only once the paths are good

    analysis = run(results=FLAGS.results, out=FLAGS.out, min_train_accuracy=FLAGS.min_train_accuracy,
                   alpha=FLAGS.alpha, group_by=list(FLAGS.group_by), figures=FLAGS.figures,
                   target_train_loss=FLAGS.target_train_loss, target_test_accuracy=FLAGS.target_test_accuracy)
    counts = analysis.runs["status"].value_counts()
    out = Path(FLAGS.out) if FLAGS.out else analysis.results / "correlate"
    fams = analysis.families[analysis.families["statistic"].isin(["spearman_p", "p_ratio", "p_permutation"])]
    print(f"correlate: {plural(len(analysis.runs), 'run folder')} ("
          + ", ".join(f"{counts[s]} {s}" for s in counts.index)
          + f"), {plural(len(analysis.labels), 'group')}, {plural(int(fams['tests'].sum()), 'test')} in "
          f"{plural(len(fams), 'family', 'families')}; wrote {out / REPORT_FILE}")
    if FLAGS.summary:
        from lrbs_tf.analysis.report.summary import summary_lines

        print("\n".join(summary_lines(analysis)), flush=True)  # report.md's Summary section
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """bin/correlate, `python -m lrbs_tf.correlate`, the lrbs-correlate console script (argv: default
    sys.argv)."""
    run_app("correlate", _main, argv)
