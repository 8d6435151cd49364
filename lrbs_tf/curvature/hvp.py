"""The measured objective: mean loss over a fixed example set, its gradient and Hessian-vector products.

The objective is

    f(theta) = sum_b (n_b / N) f_b(theta)  [+ (wd / 2) ||theta||^2 with weight decay included]

where the fixed example set of N examples is cut into batches of n_b examples (the last one may be smaller)
and f_b is the mean per-example loss of batch b. Weighting by n_b / N makes f, its gradient and H v exactly
those of the mean over all N examples whatever the batch size (an unweighted mean over batches would
over-weight a short last batch; a sum would scale H by the number of batches).

Every vector crosses the host boundary as a flat numpy float64 array of length `dim` (the trainable
parameters in `model.trainable_variables` order, each flattened row-major). Products are computed in
float32 on the device, one batch at a time, and accumulated across batches in float64.

Hessian-vector products come in two modes, each one `tf.function` traced once (v is an argument, the batch
axis is unknown-sized, so neither a new v nor a short last batch retraces):

- `forward_over_reverse` (default): a `tf.autodiff.ForwardAccumulator` with tangents v around the
  `GradientTape` that computes the gradient; the JVP of the gradient is H v. About one forward and one
  backward pass with dual numbers.
- `reverse_over_reverse`: the gradient of g(theta) . v with an outer tape. The cross-check.

The parameters are passed to the loss as plain tensors (not the Keras variables): Keras 3 variables are not
`tf.Variable`s and `ForwardAccumulator` rejects them; passing tensors also lets the same traced function be
evaluated at perturbed or interpolated weights without assigning anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from lrbs_tf.curvature.settings import BN_MODES, HVP_MODES

# losses_fn(params, x, y) -> per-example losses, shape (B,), float32. `params` is a list of float32 tensors
# in the layout's order; x is a batch of inputs (B, ...), y the integer labels (B,).
LossesFn = Callable[[Sequence[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]
# logits_fn(params, x) -> logits (B, C); params as in LossesFn.
LogitsFn = Callable[[Sequence[tf.Tensor], tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """How a list of parameter tensors maps to one flat vector (row-major per tensor, in list order)."""

    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    def flatten(self, tensors: Sequence) -> np.ndarray:
        """List of arrays/tensors with `shapes` -> flat float64 vector of length `dim`."""
        if len(tensors) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} tensors, got {len(tensors)}")
        return np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in tensors]) if tensors \
            else np.zeros(0)

    def unflatten(self, vec: np.ndarray, dtype: tf.DType = tf.float32) -> list[tf.Tensor]:
        """Flat vector of length `dim` -> list of tensors with `shapes` (cast to `dtype`)."""
        vec = np.asarray(vec)
        if vec.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape ({self.dim},), got {vec.shape}")
        parts = np.split(vec, np.cumsum(self.sizes)[:-1]) if self.shapes else []
        return [tf.constant(p.reshape(s), dtype=dtype) for p, s in zip(parts, self.shapes)]

    def split_tf(self, flat: tf.Tensor) -> list[tf.Tensor]:
        """In-graph version of `unflatten` for a float32 flat tensor."""
        parts = tf.split(flat, list(self.sizes)) if len(self.shapes) > 1 else [flat]
        return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]


def concat_flat(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """In-graph: a list of tensors -> one flat vector (the inverse of `ParamLayout.split_tf`)."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def make_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Cuts (N, ...) inputs and (N,) labels into consecutive batches of `batch_size` (the last may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs, at least one: got {len(x)} inputs, {len(y)} labels")
    return [(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size], dtype=tf.int32))
            for i in range(0, len(x), batch_size)]


class Objective:
    """f(theta) = sum_b (n_b/N) mean_i losses_b(theta)_i + (wd/2)||theta||^2, its gradient and H v.

    Args:
      losses_fn: per-example losses of a batch, see `LossesFn`. Must be twice differentiable in params.
      params: the point theta at which H is taken: float32 tensors (or arrays) with fixed shapes.
      batches: the fixed example set as (x, y) batches; weights n_b / N come from the batch sizes.
      hvp_mode: one of HVP_MODES.
      weight_decay: wd of the loss term (wd/2)||theta||^2 over all of theta (0: not part of the objective).
        Added on the host in float64 (its gradient wd*theta and Hessian wd*I are exact).
      traces: a dict owned by the caller in which the traced functions are kept and looked up (by losses_fn,
        shapes and mode): Objectives of one model measured at other weights then share one trace. The
        functions take the parameters and a batch as arguments, so sharing them changes no number.
    """

    def __init__(self, losses_fn: LossesFn, params: Sequence, batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                 hvp_mode: str = "forward_over_reverse", weight_decay: float = 0.0,
                 traces: dict | None = None) -> None:
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"hvp_mode={hvp_mode!r}; valid: {', '.join(HVP_MODES)}")
        if not batches:
            raise ValueError("the example set is empty")
        self.losses_fn = losses_fn
        self.hvp_mode = hvp_mode
        self.weight_decay = float(weight_decay)
        self.layout = ParamLayout(tuple(tuple(int(d) for d in p.shape) for p in params))
        self.params = [tf.constant(np.asarray(p), dtype=tf.float32) for p in params]
        self.theta = self.layout.flatten(self.params)  # float64 copy of the float32 point
        self.batches = list(batches)
        sizes = np.array([int(b[0].shape[0]) for b in self.batches], dtype=np.float64)
        self.num_examples = int(sizes.sum())
        self.batch_weights = sizes / sizes.sum()
        self.num_hvps = 0        # counts full-objective products (all batches), not per-batch calls
        self.num_gradients = 0
        self.num_losses = 0
        x0, y0 = self.batches[0]
        key = ("objective", losses_fn, self.layout.shapes, tuple(x0.shape[1:]), x0.dtype, y0.dtype, hvp_mode)
        traces = {} if traces is None else traces
        if key not in traces:
            traces[key] = self._build()
        self._loss, self._loss_and_grad, self._hvp = traces[key]

    # --- traced functions ---------------------------------------------------------------------------------

    def _build(self) -> tuple:
        """The traced loss, loss-and-gradient and HVP (in hvp_mode) functions."""
        layout, losses_fn = self.layout, self.losses_fn
        x0, y0 = self.batches[0]
        param_specs = [tf.TensorSpec(s, tf.float32) for s in layout.shapes]
        x_spec = tf.TensorSpec((None,) + tuple(x0.shape[1:]), x0.dtype)
        y_spec = tf.TensorSpec((None,), y0.dtype)
        vec_spec = tf.TensorSpec((layout.dim,), tf.float32)

        def batch_loss(params, x, y):
            return tf.reduce_mean(tf.cast(losses_fn(params, x, y), tf.float32))

        @tf.function(input_signature=[param_specs, x_spec, y_spec])
        def loss(params, x, y):
            return batch_loss(params, x, y)

        @tf.function(input_signature=[param_specs, x_spec, y_spec])
        def loss_and_grad(params, x, y):
            with tf.GradientTape() as tape:
                tape.watch(params)
                value = batch_loss(params, x, y)
            grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return value, concat_flat(grads)

        @tf.function(input_signature=[param_specs, vec_spec, x_spec, y_spec])
        def hvp_forward_over_reverse(params, v, x, y):
            with tf.autodiff.ForwardAccumulator(params, layout.split_tf(v)) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    value = batch_loss(params, x, y)
                grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return concat_flat(acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO))

        @tf.function(input_signature=[param_specs, vec_spec, x_spec, y_spec])
        def hvp_reverse_over_reverse(params, v, x, y):
            with tf.GradientTape() as outer:
                outer.watch(params)
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    value = batch_loss(params, x, y)
                grads = inner.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                g_dot_v = tf.reduce_sum(concat_flat(grads) * v)
            return concat_flat(outer.gradient(g_dot_v, params,
                                               unconnected_gradients=tf.UnconnectedGradients.ZERO))

        return loss, loss_and_grad, (hvp_forward_over_reverse if self.hvp_mode == "forward_over_reverse"
                                     else hvp_reverse_over_reverse)

    # --- host-side API (flat float64 vectors) -------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Number of parameters d (length of every flat vector)."""
        return self.layout.dim

    def _point(self, theta: np.ndarray | None) -> list[tf.Tensor]:
        return self.params if theta is None else self.layout.unflatten(theta)

    def _decay(self, theta: np.ndarray | None) -> np.ndarray:
        return self.theta if theta is None else np.asarray(theta, np.float64)

    def loss(self, theta: np.ndarray | None = None) -> float:
        """f at theta (flat float64, length dim; None: the base point), in nats per example."""
        params = self._point(theta)
        total = 0.0
        for w, (x, y) in zip(self.batch_weights, self.batches):
            total += float(w) * float(self._loss(params, x, y))
        if self.weight_decay:
            t = self._decay(theta)
            total += 0.5 * self.weight_decay * float(t @ t)
        self.num_losses += 1
        return total

    def loss_and_gradient(self, theta: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """(f, grad f) at theta; the gradient is a flat float64 vector of length dim."""
        params = self._point(theta)
        total, grad = 0.0, tf.zeros([self.dim], tf.float64)
        for w, (x, y) in zip(self.batch_weights, self.batches):
            value, g = self._loss_and_grad(params, x, y)
            total += float(w) * float(value)
            grad += w * tf.cast(g, tf.float64)
        grad = grad.numpy()
        if self.weight_decay:
            t = self._decay(theta)
            total += 0.5 * self.weight_decay * float(t @ t)
            grad = grad + self.weight_decay * t
        self.num_gradients += 1
        return total, grad

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """H v at the base point: v and the result are flat float64 vectors of length dim.

        v is rounded to float32 for the device product; the batches' products are summed in float64.
        """
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape != (self.dim,):
            raise ValueError(f"v has shape {v.shape}, expected ({self.dim},)")
        v32 = tf.constant(v, dtype=tf.float32)
        total = tf.zeros([self.dim], tf.float64)
        for w, (x, y) in zip(self.batch_weights, self.batches):
            total += w * tf.cast(self._hvp(self.params, v32, x, y), tf.float64)
        out = total.numpy()
        if self.weight_decay:
            out = out + self.weight_decay * v
        self.num_hvps += 1
        return out

    def reset_counters(self) -> None:
        self.num_hvps = self.num_gradients = self.num_losses = 0


# --- Keras models ------------------------------------------------------------------------------------------

def keras_losses_fn(model, bn_mode: str = "inference", traces: dict | None = None) -> LossesFn:
    """Per-example softmax cross-entropy (nats) of a logits model, as a function of its trainable weights.

    The model runs through `model.stateless_call`: trainable weights come from the `params` argument and the
    non-trainable ones (BN moving statistics) are read from the model's variables; the updated statistics
    that a training-mode call returns are discarded, so no measurement ever changes them.

    bn_mode "inference" normalises with the moving statistics (the model as it is evaluated; each example's
    loss is independent of the others). "batch" normalises with each batch's own statistics (the model as
    SGD sees it, so H then depends on how the examples are batched).
    traces: see Objective; the same model and mode give the same losses_fn from it, so traces built on that
    losses_fn are found again.
    """
    traces = {} if traces is None else traces
    key = ("losses_fn", id(model), bn_mode)
    if key in traces:
        return traces[key][1]
    logits_fn = keras_logits_fn(model, bn_mode, traces)

    def losses_fn(params, x, y):
        return softmax_cross_entropy(logits_fn(params, x), y)

    traces[key] = (model, losses_fn)  # the model is kept with its id, so the id cannot be reused meanwhile
    return losses_fn


def keras_logits_fn(model, bn_mode: str = "inference", traces: dict | None = None) -> LogitsFn:
    """The logits (B, C) of a Keras logits model as a function of its trainable weights: the function
    keras_losses_fn's losses and the Gauss-Newton products (curvature/ggn.py) both differentiate. Moving
    statistics are read, never updated; bn_mode as in keras_losses_fn."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r}; valid: {', '.join(BN_MODES)}")
    traces = {} if traces is None else traces
    key = ("logits_fn", id(model), bn_mode)
    if key in traces:
        return traces[key][1]
    training = bn_mode == "batch"
    # Captured as variables: read when called, so they are the model's current statistics (also after
    # model.set_weights, which assigns into these same variables).
    non_trainable = [v.value for v in model.non_trainable_variables]

    def logits_fn(params, x):
        with exact_batch_moments(training):
            logits, _ = model.stateless_call(list(params), non_trainable, x, training=training)
        return logits

    traces[key] = (model, logits_fn)
    return logits_fn


@contextlib.contextmanager
def exact_batch_moments(active: bool = True):
    """While tracing a batch-mode (training=True) call: BN's batch statistics with exact second derivatives.

    Keras' TensorFlow backend takes them from tf.nn.moments, which computes the variance around
    stop_gradient(mean): its first derivative is exact (the deviations sum to zero), its second is not, so
    Hessian-vector products through batch statistics came out wrong (about 10-40% relative error against
    a dense float64 Hessian on a tiny BN MLP, the two HVP modes disagreeing; tests/test_curvature_stability.py)
    while gradients, and so training, were right. Inside this context the variance is
    mean((x - mean)^2) with the mean differentiated. Only the Python tracing of the call is affected.
    """
    if not active:
        yield
        return
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    def moments(x, axes, keepdims):
        mean = tf.reduce_mean(x, axes, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=True)
        if not keepdims:
            mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        return mean, variance

    original = keras_tf_nn._compute_moments
    keras_tf_nn._compute_moments = moments
    try:
        yield
    finally:
        keras_tf_nn._compute_moments = original


def softmax_cross_entropy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-example -log softmax(logits)[y], shape (B,), float32.

    Written with log_softmax + gather rather than the fused sparse op, whose gradient is registered as not
    twice differentiable in TensorFlow.
    """
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    return -tf.gather(logp, tf.cast(y, tf.int32), axis=1, batch_dims=1)


def keras_objective(model, x: np.ndarray, y: np.ndarray, batch_size: int, bn_mode: str = "inference",
                    hvp_mode: str = "forward_over_reverse", weight_decay: float = 0.0,
                    traces: dict | None = None) -> Objective:
    """The Objective of a Keras logits model on inputs x (N, ...) float32 and labels y (N,), at its weights."""
    return Objective(keras_losses_fn(model, bn_mode, traces), [v.value for v in model.trainable_variables],
                     make_batches(x, y, batch_size), hvp_mode=hvp_mode, weight_decay=weight_decay, traces=traces)
