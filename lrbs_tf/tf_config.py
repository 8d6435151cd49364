"""`python -m lrbs_tf.tf_config`: the TF_CONFIG of this SLURM task, from TensorFlow's SlurmClusterResolver.

One bin/train run over several hosts (MultiWorkerMirroredStrategy, lrbs_tf.training.distribute) needs each process
to know the cluster and its own place in it: the TF_CONFIG environment variable. Under `srun`, SLURM
already says both (SLURM_STEP_NODELIST, e.g. node[01-04], SLURM_STEP_TASKS_PER_NODE, SLURM_PROCID), and
SlurmClusterResolver turns them into a cluster spec (hosts in sorted order, one port per task on a host,
from `port`). So each task runs, as docs/examples/multihost.slurm does:

    export TF_CONFIG=$(.venv/bin/python -m lrbs_tf.tf_config) && exec .venv/bin/python bin/train ...

Worker 0 is the chief: it alone writes the run folders (which must be on a filesystem all hosts see).
GPUs are left as SLURM assigned them: CUDA_VISIBLE_DEVICES is not changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_PORT = 12345


def from_slurm(port: int = DEFAULT_PORT) -> dict:
    """TF_CONFIG for this task as a dict ({"cluster": {"worker": [host:port, ...]}, "task": {...}}).

    Raises RuntimeError (SlurmClusterResolver's) outside a SLURM step."""
    from lrbs_tf.core.resources import quiet_import_tensorflow

    quiet_import_tensorflow()
    import tensorflow as tf

    # The resolver also deals GPUs to tasks, probing nvidia-smi unless told a count, and refuses more tasks
    # on a node than GPUs. The deal is not used (auto_set_gpu=False: SLURM's allocation stands), so it is
    # given one notional GPU per task of the step, which fits any placement of the tasks.
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    cluster = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.get_task_info()
    return {"cluster": cluster, "task": {"type": task_type, "index": task_id}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lrbs_tf.tf_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="first port of each host (its k-th task listens on port + k; default %(default)s)")
    args = parser.parse_args()
    try:
        config = from_slurm(args.port)
    except RuntimeError as e:
        print(f"tf_config: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(config))


if __name__ == "__main__":
    main()
