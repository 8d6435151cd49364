"""`python -m lrbs_tf.bound`: bin/bound, He et al. (2019)'s PAC-Bayes bound for a measured run.

The binary lives in lrbs_tf.cli.theory (with bin/nqm); the bounds themselves in lrbs_tf.theory.bounds. This
module only gives the binary the `python -m lrbs_tf.<binary>` name every other binary has.
"""

from lrbs_tf.cli.theory import bound_main as main

__all__ = ["main"]

if __name__ == "__main__":
    main()
