"""`python -m lrbs_tf.sweep`: bin/sweep (lrbs_tf.cli.sweep). The sweep's library is this package; its command line,
like every binary's, is in lrbs_tf.cli."""

from lrbs_tf.cli.sweep import main

main()
