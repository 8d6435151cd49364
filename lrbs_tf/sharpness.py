"""`python -m lrbs_tf.sharpness` and the lrbs-sharpness console script: bin/sharpness: curvature of trained runs (lrbs_tf.cli.sharpness; the library is lrbs_tf.curvature)."""

from lrbs_tf.cli.sharpness import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
