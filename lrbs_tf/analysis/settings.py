"""bin/correlate's defaults, read by its flags (lrbs_tf.cli.flags), by correlate's signatures and by the
Python API: one source. No pandas, so defining flags stays cheap."""

DEFAULT_MIN_TRAIN_ACCURACY = 0.99  # fraction: the premise of ~zero training error
DEFAULT_ALPHA = 0.005              # the paper's significance threshold
# --group_by's token for "every identity setting (runs/config.IDENTITY_SETTINGS) that varies among the runs of
# one arch and dataset in the results folder, other than batch size, learning rate and seed" (and the data's
# source and file, which the dataset's name stands for): a sweep over weight decay x momentum x width is
# analysed per (weight decay, momentum, width) without naming them.
VARYING = "varying"
# The default: the budget (epochs, max_steps, stop_at_train_loss), momentum and weight decay always (their
# runs.csv columns are written whether or not they vary: runs of equal epochs and runs of equal steps answer
# different questions, Hoffer et al. 2017, so they are never pooled), then every other varying setting (so runs of
# different learning-rate / batch-size schedules are never pooled either: lrbs_tf.analysis.schedules compares them),
# nor runs of another SVAG l (another algorithm: lrbs_tf.analysis.sde compares them).
DEFAULT_GROUP_BY = ("momentum", "weight_decay", "epochs", "max_steps", "stop_at_train_loss", VARYING)
# Identity settings never grouped by VARYING: the dataset's name (the group's `dataset`) stands for them.
NOT_GROUPED = ("dataset_name", "data_path")
