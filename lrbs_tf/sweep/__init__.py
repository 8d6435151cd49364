"""bin/sweep: the grid and its work units and shards (`grid`), the sweep's configuration (`config`), local
worker slots and the progress line (`workers`), and the scheduler (`scheduler`). No TensorFlow: bin/train
runs in child processes. Imports core and runs; never training, curvature or analysis.
"""
