"""bin/correlate's defaults, read by its flags (lrbs_tf.cli.flags), by correlate's signatures and by the
Python API: one source. No pandas, so defining flags stays cheap."""

DEFAULT_MIN_TRAIN_ACCURACY = 0.99  # fraction: the premise of ~zero training error
DEFAULT_ALPHA = 0.005              # the paper's significance threshold
# The budget (epochs, max_steps, stop_at_train_loss) is in the group: runs of equal epochs and runs of equal
# steps answer different questions (Hoffer et al. 2017), so they are never pooled.
# SVAG's l too (bin/train --svag): runs of another l are another algorithm (analysis/sde.py compares them).
DEFAULT_GROUP_BY = ("momentum", "weight_decay", "epochs", "max_steps", "stop_at_train_loss", "svag")
