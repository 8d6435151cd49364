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
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise StrategyError(f"batch_size={batch_size} is not divisible by {replicas} replicas")
