"""Choosing the tf.distribute strategy and the numerics settings, before TensorFlow runs any op."""

from __future__ import annotations

import json
import os

import tensorflow as tf


class StrategyError(ValueError):
    """A device set-up that cannot serve the run (e.g. batch size not divisible by the replicas)."""


def configure_threads(intra_op: int, inter_op: int) -> None:
    """CPU thread pools (0 keeps TensorFlow's default); must run before TF executes its first op."""
    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def configure_numerics(deterministic: bool, tf32: bool) -> None:
    """Op determinism (identical reruns on CPU) and TF32 (off unless asked: it changes the numerics studied)."""
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def split_cpu(num_devices: int) -> None:
    """Splits the physical CPU into `num_devices` logical devices (must run before TF initialises devices).

    If TF is already initialised (e.g. a test process configured them earlier), enough existing logical CPU
    devices are accepted as they are.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < num_devices:
            raise StrategyError(f"cpu_devices={num_devices} but TensorFlow is already initialised with "
                                f"{have} logical CPU device(s)") from None


def make_strategy(cpu_devices: int = 0) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy over all visible
    GPUs (or over `cpu_devices` logical CPUs), else the default strategy (one device)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_devices > 1:
        split_cpu(cpu_devices)
        # Reduce through one device rather than CPU collective ops: collective instance keys restart with
        # every strategy object, so a second strategy in the same process (tests, notebooks) collides with
        # the first ("Shape mismatch in the collective instance").
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (no public accessor)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The worker that writes run folders: task 'chief', or worker 0 when the cluster names no chief."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and \
        "chief" not in resolver.cluster_spec().as_dict()


def distribute_train(strategy: tf.distribute.Strategy, make_global_batches, global_batch_size: int):
    """Distributes a dataset of global batches so the replicas together see exactly each global batch.

    One worker: tf.distribute splits each global batch over the local replicas. Several workers: every worker
    builds the same (seeded) global batches and keeps only its replicas' contiguous slices, so training with
    W workers is the same computation as with one worker and the same global batch (no auto-sharding, which
    would regroup examples into different batches).
    """
    if not is_multi_worker(strategy):
        return strategy.experimental_distribute_dataset(make_global_batches())

    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        replicas, workers, worker = ctx.num_replicas_in_sync, ctx.num_input_pipelines, ctx.input_pipeline_id
        local = replicas // workers
        slices = make_global_batches().unbatch().batch(global_batch_size // replicas, drop_remainder=True)
        mine = slices.enumerate().filter(lambda i, _: (i % replicas) // local == worker)
        return mine.map(lambda _, batch: batch).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(per_worker)
