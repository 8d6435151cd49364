"""Batch sharpness (Andreyev & Beneventano 2024, "Edge of Stochastic Stability"): the curvature that SGD's
own steps see,

    batch_sharpness = E_B [ g_B' H_B g_B / |g_B|^2 ]

over minibatches B of the run's training batch size, g_B and H_B the minibatch's gradient and Hessian.
Under SGD with step lr it is batch_sharpness * lr / 2 that is predicted to settle at 1 (the stability edge
of a quadratic along g_B), while the full-batch lambda_max sits below 2 / lr.

The minibatches are drawn as training draws them: each pass over the measured example set (the first
--num_examples of the training split; 0 = all of it, the set training draws from) is a fresh uniform
permutation cut into consecutive batches of `batch_size`, the remainder dropped, passes repeated until
`count` batches; the permutations come from a seeded generator (the quantity's own stream). A batch as
large as the example set is the set itself (every pass gives the same batch): one batch, no standard error,
and the quotient is a Rayleigh quotient of the objective's H, so at most its lambda_max.

Each batch costs one gradient and one Hessian-vector product on its examples (an HVP is 2-3 gradients,
docs/curvature.md). The mean is over batches, its standard error std / sqrt(count) (ddof 1): the batches
are independent draws of the same random quotient (within a pass they are drawn without replacement, which
only lowers the variance of the mean). BN follows the objective's mode: in batch mode each minibatch is
normalised with its own statistics (the model exactly as SGD sees it); in inference mode with the moving
statistics. Weight decay, when the objective includes it, is in g_B (+ wd theta) and H_B (+ wd I).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lrbs_tf.curvature.hvp import LossesFn, Objective, make_batches


@dataclasses.dataclass
class BatchSharpness:
    mean: float              # E_B[g_B' H_B g_B / |g_B|^2], Hessian units (nats per parameter^2)
    stderr: float            # standard error of the mean over batches (0 with one batch)
    batches: int             # minibatches averaged
    batch_size: int          # examples per minibatch (the run's batch size, at most the example set)
    values: np.ndarray       # (batches,) the quotient of each minibatch
    num_gradients: int       # minibatch gradients (each on batch_size examples)
    num_hvps: int            # minibatch Hessian-vector products


def draw_batches(num_examples: int, batch_size: int, count: int, seed: int) -> list[np.ndarray]:
    """Index arrays of `count` minibatches of min(batch_size, num_examples) examples, drawn as training draws
    them (a seeded permutation per pass, cut into batches, the remainder dropped); one when a batch is the
    whole set."""
    if num_examples < 1 or batch_size < 1 or count < 1:
        raise ValueError(f"need num_examples, batch_size, count >= 1: got {num_examples}, {batch_size}, {count}")
    b = min(batch_size, num_examples)
    if b == num_examples:
        return [np.arange(num_examples)]
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < count:
        perm = rng.permutation(num_examples)
        out += [perm[i:i + b] for i in range(0, num_examples - b + 1, b)][:count - len(out)]
    return out


def batch_sharpness(losses_fn: LossesFn, params, x: np.ndarray, y: np.ndarray, batch_size: int, count: int,
                    seed: int, chunk_size: int, hvp_mode: str = "forward_over_reverse",
                    weight_decay: float = 0.0, traces: dict | None = None) -> BatchSharpness:
    """The mean of g_B' H_B g_B / |g_B|^2 over `count` minibatches of `batch_size` drawn from x (N, ...) and
    y (N,) by `draw_batches(N, batch_size, count, seed)`, at `params`.

    chunk_size: examples per forward/backward pass inside a minibatch (a minibatch's H is the size-weighted
    mean over its chunks, exact when each example's loss is independent of the others); with batch-mode BN
    pass chunk_size >= batch_size so each minibatch is normalised with its own statistics as in training.
    A batch whose gradient is exactly 0 has no quotient and is left out of the mean.
    traces: see hvp.Objective (the minibatch objectives share the traced functions).
    """
    traces = {} if traces is None else traces
    values, grads, hvps = [], 0, 0
    for idx in draw_batches(len(x), batch_size, count, seed):
        obj = Objective(losses_fn, params, make_batches(x[idx], y[idx], max(1, min(chunk_size, len(idx)))),
                        hvp_mode=hvp_mode, weight_decay=weight_decay, traces=traces)
        _, g = obj.loss_and_gradient()
        hg = obj.hvp(g)
        grads, hvps = grads + 1, hvps + 1
        g_sq = float(g @ g)
        if g_sq > 0.0 and math.isfinite(g_sq):
            values.append(float(g @ hg) / g_sq)
    v = np.asarray(values, np.float64)
    mean = float(v.mean()) if len(v) else math.nan
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0 if len(v) else math.nan
    return BatchSharpness(mean, se, len(v), min(batch_size, len(x)), v, grads, hvps)
