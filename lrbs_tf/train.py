"""`python -m lrbs_tf.train` and the lrbs-train console script: bin/train: constant-LR SGD into run folders (lrbs_tf.cli.train; the library is lrbs_tf.training)."""

from lrbs_tf.cli.train import main
from lrbs_tf.training.run import run, run_column  # lrbs_tf.train.run_column, as before

__all__ = ["main", "run", "run_column"]

if __name__ == "__main__":
    main()
