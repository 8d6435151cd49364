"""Loss and accuracy along the line between two trained models (Goodfellow et al. 2015; Jastrzebski et al.
2018, Fig. 4): theta(alpha) = (1 - alpha) theta_a + alpha theta_b, for alphas that extend beyond [0, 1] so
the basin around each end is visible.

Trainable weights are interpolated linearly. A BN model also carries moving statistics, which have no
canonical interpolation; two choices (`bn_stats`):

- "interpolate" (default): moving means linearly, moving variances log-linearly (geometric mean,
  var_a^(1 - alpha) var_b^alpha). A linear blend of variances turns negative outside [0, 1] when
  var_a > 3 var_b (alpha = -0.5) and the network then outputs NaN; the geometric blend stays positive,
  is exact at alpha = 0 and 1, and equals the linear one to first order when the variances are close.
  The endpoints reproduce each model's own evaluation exactly.
- "recompute": at every alpha the statistics are re-estimated on the training examples, as PyTorch's
  `swa_utils.update_bn` does: a forward pass in training mode, each BN layer's batch means and variances
  averaged over batches weighted by batch size. The endpoints then differ slightly from the models' own
  statistics (a few thousand examples, not SGD's running average).

Evaluation always uses BN in inference mode (the model as it is tested) through `model.stateless_call`, so
neither model's variables are touched.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from lrbs_tf.curvature.hvp import softmax_cross_entropy
from lrbs_tf.curvature.settings import INTERP_BN_STATS


def _walk_layers(layer):
    for sub in getattr(layer, "layers", []) or []:
        yield sub
        yield from _walk_layers(sub)


def bn_statistics_indices(model) -> list[tuple[int, int, float]]:
    """(index of moving_mean, index of moving_variance, momentum) in `model.non_trainable_variables`, per
    BatchNormalization layer (nested models included)."""
    import keras

    index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    out = []
    for layer in _walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer.moving_mean) in index:
            out.append((index[id(layer.moving_mean)], index[id(layer.moving_variance)], float(layer.momentum)))
    return out


def check_same_architecture(model_a, model_b) -> None:
    """Raises ValueError naming the first variable whose shape differs (or a differing variable count)."""
    for kind in ("trainable_variables", "non_trainable_variables"):
        va, vb = getattr(model_a, kind), getattr(model_b, kind)
        if len(va) != len(vb):
            raise ValueError(f"the two models have different numbers of {kind.replace('_', ' ')}: "
                             f"{len(va)} vs {len(vb)}")
        for a, b in zip(va, vb):
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(f"the two models differ at {a.path}: shape {tuple(a.shape)} vs {b.path} "
                                 f"{tuple(b.shape)}")


class Evaluator:
    """Mean cross-entropy (nats) and accuracy of `model`'s architecture at any given weights.

    traces: a caller's dict keeping the traced functions per model (see hvp.Objective): an Evaluator of the
    same model made again reuses them."""

    def __init__(self, model, traces: dict | None = None) -> None:
        self.model = model
        self.bn = bn_statistics_indices(model)
        traces = {} if traces is None else traces
        key = ("evaluator", id(model))
        if key not in traces:
            traces[key] = (model, *self._build(model))
        _, self._eval_batch, self._train_mode_stats = traces[key]

    @staticmethod
    def _build(model):

        @tf.function(reduce_retracing=True)
        def eval_batch(trainable, non_trainable, x, y):
            logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            losses = softmax_cross_entropy(logits, y)
            correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32),
                                       tf.cast(y, tf.int32)), tf.float64)
            return tf.reduce_sum(tf.cast(losses, tf.float64)), tf.reduce_sum(correct)

        @tf.function(reduce_retracing=True)
        def train_mode_stats(trainable, non_trainable, x):
            _, updated = model.stateless_call(trainable, non_trainable, x, training=True)
            return updated

        return eval_batch, train_mode_stats

    def evaluate(self, trainable: Sequence[np.ndarray], non_trainable: Sequence[np.ndarray],
                 batches: Sequence[tuple[tf.Tensor, tf.Tensor]]) -> tuple[float, float]:
        """(mean loss in nats, accuracy in [0, 1]) over all examples of `batches`."""
        tr = [tf.constant(w, tf.float32) for w in trainable]
        nt = [tf.constant(w, tf.float32) for w in non_trainable]
        loss, correct, n = 0.0, 0.0, 0
        for x, y in batches:
            s, c = self._eval_batch(tr, nt, x, y)
            loss, correct, n = loss + float(s), correct + float(c), n + int(x.shape[0])
        return loss / n, correct / n

    def recompute_bn(self, trainable: Sequence[np.ndarray], non_trainable: Sequence[np.ndarray],
                     batches: Sequence[tuple[tf.Tensor, tf.Tensor]]) -> list[np.ndarray]:
        """`non_trainable` with every BN layer's moving mean/variance replaced by the batch-size-weighted mean
        of its training-mode batch statistics over `batches`."""
        tr = [tf.constant(w, tf.float32) for w in trainable]
        start = [np.array(w, np.float32) for w in non_trainable]
        for mean_i, var_i, _ in self.bn:  # zero start: an update then reads (1 - momentum) * batch statistic
            start[mean_i][...] = 0.0
            start[var_i][...] = 0.0
        nt = [tf.constant(w) for w in start]
        sums = {i: np.zeros(start[i].shape, np.float64) for m, v, _ in self.bn for i in (m, v)}
        n = 0
        for x, _ in batches:
            updated = self._train_mode_stats(tr, nt, x)
            b = int(x.shape[0])
            for mean_i, var_i, momentum in self.bn:
                for i in (mean_i, var_i):
                    sums[i] += b * np.asarray(updated[i], np.float64) / (1.0 - momentum)
            n += b
        out = [np.array(w, np.float32) for w in non_trainable]
        for i, s in sums.items():
            out[i] = (s / n).astype(np.float32)
        return out


def blend(a: Sequence[np.ndarray], b: Sequence[np.ndarray], alpha: float,
          geometric: Sequence[int] = ()) -> list[np.ndarray]:
    """(1 - alpha) a + alpha b per tensor; tensors whose index is in `geometric` (positive) blend as
    a^(1 - alpha) b^alpha. Computed in float64, returned as float32."""
    geometric = set(geometric)
    out = []
    for i, (wa, wb) in enumerate(zip(a, b)):
        wa, wb = np.asarray(wa, np.float64), np.asarray(wb, np.float64)
        if i in geometric:
            w = np.exp((1 - alpha) * np.log(np.maximum(wa, 1e-30)) + alpha * np.log(np.maximum(wb, 1e-30)))
        else:
            w = (1 - alpha) * wa + alpha * wb
        out.append(w.astype(np.float32))
    return out


def interpolation_curve(model_a, model_b, alphas: Sequence[float],
                        train_batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                        test_batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                        bn_stats: str = "interpolate") -> list[dict]:
    """One row per alpha: alpha, train_loss, train_accuracy, test_loss, test_accuracy (nats, fractions).

    Cost per alpha: one forward pass over the train and test examples (+ one more over the train examples
    with bn_stats="recompute").
    """
    if bn_stats not in INTERP_BN_STATS:
        raise ValueError(f"bn_stats={bn_stats!r}; valid: {', '.join(INTERP_BN_STATS)}")
    check_same_architecture(model_a, model_b)
    ev = Evaluator(model_a)
    ta = [np.asarray(v.value) for v in model_a.trainable_variables]
    tb = [np.asarray(v.value) for v in model_b.trainable_variables]
    na = [np.asarray(v.value) for v in model_a.non_trainable_variables]
    nb = [np.asarray(v.value) for v in model_b.non_trainable_variables]
    variances = [var_i for _, var_i, _ in ev.bn]
    rows = []
    for alpha in alphas:
        tr = blend(ta, tb, alpha)
        nt = blend(na, nb, alpha, geometric=variances)
        if bn_stats == "recompute" and ev.bn:
            nt = ev.recompute_bn(tr, nt, train_batches)
        train_loss, train_acc = ev.evaluate(tr, nt, train_batches)
        test_loss, test_acc = ev.evaluate(tr, nt, test_batches)
        rows.append({"alpha": float(alpha), "train_loss": train_loss, "train_accuracy": train_acc,
                     "test_loss": test_loss, "test_accuracy": test_acc})
    return rows
