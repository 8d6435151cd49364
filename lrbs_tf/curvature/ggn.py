"""The generalised Gauss-Newton matrix G of the measured objective, through Gauss-Newton-vector products.

For the mean cross-entropy f = sum_b (n_b/N) (1/n_b) sum_{i in b} CE(z_i, y_i) of logits z_i = z(x_i; theta),

    G = sum_b (n_b/N) (1/n_b) sum_{i in b} J_i' H_i J_i      [+ wd I with weight decay included]

J_i = dz_i/dtheta (C x d) and H_i = d^2 CE / dz^2 = diag(p_i) - p_i p_i' (p_i = softmax(z_i)). H = G + sum_i
(dCE/dz_i) . d^2 z_i/dtheta^2: G drops the part of the Hessian that the loss's first derivative weights, so
G is positive semi-definite and, for softmax cross-entropy (a canonical link), equal to the Fisher
information of the model's predictive distribution (Martens 2014; the NQM rebuttal's "Fisher = Gauss-Newton
Hessian"). G does not depend on the labels. H_i does not depend on theta's direction either, so G v costs
one forward-mode product (J v, a JVP of the logits) and one reverse-mode product (J' u), about one HVP:

    G v = vjp( H_out . jvp(v) ),   (H_i u)_c = p_ic u_c - p_ic (p_i . u).

BN: in inference mode z_i depends on example i alone; in batch mode on its chunk's statistics, and J_i is
then differentiated through them (as the Hessian is in that mode). The chunking, weighting, float32 device
products summed in float64 and the trace sharing across models of one architecture are those of
hvp.Objective. Eigenvalues and trace come from the same solvers as the Hessian's (eigen, trace).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from lrbs_tf.curvature.hvp import LogitsFn, ParamLayout, concat_flat


class GaussNewton:
    """G v at `params` over `batches` (hvp.make_batches), weighted by batch size as hvp.Objective is.

    gvp(v): flat float64 vectors of length dim, like Objective.hvp; num_gvps counts full-set products."""

    def __init__(self, logits_fn: LogitsFn, params: Sequence, batches: Sequence[tuple[tf.Tensor, tf.Tensor]],
                 weight_decay: float = 0.0, traces: dict | None = None) -> None:
        if not batches:
            raise ValueError("the example set is empty")
        self.layout = ParamLayout(tuple(tuple(int(d) for d in p.shape) for p in params))
        self.params = [tf.constant(np.asarray(p), dtype=tf.float32) for p in params]
        self.batches = list(batches)
        sizes = np.array([int(b[0].shape[0]) for b in self.batches], dtype=np.float64)
        self.batch_weights = sizes / sizes.sum()
        self.weight_decay = float(weight_decay)
        self.num_gvps = 0
        x0 = self.batches[0][0]
        key = ("gvp", logits_fn, self.layout.shapes, tuple(x0.shape[1:]), x0.dtype)
        traces = {} if traces is None else traces
        if key not in traces:
            traces[key] = self._build(logits_fn, x0)
        self._gvp = traces[key]

    @property
    def dim(self) -> int:
        return self.layout.dim

    def _build(self, logits_fn: LogitsFn, x0: tf.Tensor):
        layout = self.layout
        param_specs = [tf.TensorSpec(s, tf.float32) for s in layout.shapes]

        @tf.function(input_signature=[param_specs, tf.TensorSpec((layout.dim,), tf.float32),
                                      tf.TensorSpec((None,) + tuple(x0.shape[1:]), x0.dtype)])
        def gvp(params, v, x):
            with tf.GradientTape() as tape:
                tape.watch(params)
                with tf.autodiff.ForwardAccumulator(params, layout.split_tf(v)) as acc:
                    logits = tf.cast(logits_fn(params, x), tf.float32)
            jv = acc.jvp(logits, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # (B, C)
            p = tf.nn.softmax(logits, axis=-1)
            h_jv = p * jv - p * tf.reduce_sum(p * jv, axis=-1, keepdims=True)
            u = tf.stop_gradient(h_jv) / tf.cast(tf.shape(x)[0], tf.float32)  # the batch mean's 1/n_b
            return concat_flat(tape.gradient(logits, params, output_gradients=u,
                                             unconnected_gradients=tf.UnconnectedGradients.ZERO))

        return gvp

    def gvp(self, v: np.ndarray) -> np.ndarray:
        """G v (v rounded to float32 for the device product; batches summed in float64)."""
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape != (self.dim,):
            raise ValueError(f"v has shape {v.shape}, expected ({self.dim},)")
        v32 = tf.constant(v, dtype=tf.float32)
        total = tf.zeros([self.dim], tf.float64)
        for w, (x, _) in zip(self.batch_weights, self.batches):
            total += w * tf.cast(self._gvp(self.params, v32, x), tf.float64)
        out = total.numpy()
        if self.weight_decay:
            out = out + self.weight_decay * v
        self.num_gvps += 1
        return out
