"""The run folder, the contract between the binaries (README, "The run folder").

- `config`: TrainConfig, every setting of a run (the keys of config.json), their defaults and checks.
- `folder`: the run folder's files, statuses, schemas, keys (sharpness.json's among them), atomic writers and
  the one typed reader.
- `table`: the tidy table of runs read through `folder`.
- `checkpoints`: which saved state can be trusted.
- `tensorboard`: each run's TensorBoard events.

No TensorFlow or pandas at import (checkpoints, tensorboard and table import them when called).
"""
