"""Training (bin/train): the run folder's life cycle (`run`), the loop read top to bottom (`loop`), a column's
members (`members`), the step functions (`steps`), the stacked engine (`stacked`) and tf.distribute
(`distribute`). Imports core, data, models, runs; never curvature, sweep or analysis.
"""
