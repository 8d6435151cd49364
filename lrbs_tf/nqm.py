"""`python -m lrbs_tf.nqm`: bin/nqm, the Noisy Quadratic Model's steps to target against batch size.

The binary lives in lrbs_tf.cli.theory (with bin/bound); the model itself in lrbs_tf.theory.nqm. This module
only gives the binary the `python -m lrbs_tf.<binary>` name every other binary has.
"""

from lrbs_tf.cli.theory import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
