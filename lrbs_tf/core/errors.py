"""The error types every lrbs_tf module raises, in one leaf module (no imports), so any module can raise them
without depending on the command-line layer or on TensorFlow.

How each is reported (lrbs_tf.cli.app): bad input (`UsageError`, `RunFolderError`, and `DataError` once a binary
has turned it into a UsageError) is one line on stderr and exit status 2; `TrainingFailed` is one line and
exit status 1, with the run folder recording status `failed`; `RunLocked` (another process is writing the
run folder) is one line and exit status LOCKED_EXIT.
"""

# Exit status of a binary refused a run folder another process holds (lrbs_tf.runs.locking): sysexits.h's
# EX_TEMPFAIL, "try again later". Neither bad input (2) nor a failure (1): bin/sweep counts the run as
# running elsewhere.
LOCKED_EXIT = 75


class UsageError(ValueError):
    """Bad input from the user (a flag, a file, a folder): reported as one line and exit status 2."""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (missing, unfinished, corrupt, or another configuration)."""


class DataError(ValueError):
    """A dataset that cannot be loaded as asked; the message names the file or dataset."""


class TrainingFailed(RuntimeError):
    """Training itself failed (not bad input); the run folder records status `failed` and the error."""


class RunLocked(RunFolderError):
    """Another process holds the run folder's lock (lrbs_tf.runs.locking): it is being written elsewhere."""
