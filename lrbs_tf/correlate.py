"""`python -m lrbs_tf.correlate` and the lrbs-correlate console script: bin/correlate: the statistics, tables and figures of a folder of runs (lrbs_tf.cli.correlate; the library is
lrbs_tf.analysis)."""

from lrbs_tf.analysis.correlate import analyse, run  # lrbs_tf.correlate.run, as before
from lrbs_tf.cli.correlate import main

__all__ = ["analyse", "main", "run"]

if __name__ == "__main__":
    main()
