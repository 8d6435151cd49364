"""Learning-rate (and momentum / EMA-decay) tuning for the NQM: the fewest steps to the target loss.

Two searches over candidate settings (lr, second), where `second` is the momentum or EMA decay:

- `tune_grid`: a log grid of learning rates below the stability limit, extended downwards while the best
  is the smallest tried, then refined between the best lr's neighbours. Used where there is nothing to
  start from (the first batch size) and for EMA, whose steps-vs-lr curve has two basins.
- `tune_local`: a local search per `second` value from seed learning rates (the previous batch size's best,
  and for momentum the SGD optimum at equal effective lr a / (1 - beta)): step outwards until the best is
  bracketed, then halve the bracket (in log lr) a few times for the most promising second values.

Both prune with an upper bound: a setting still above target at `upper` steps cannot win and costs one
loss evaluation, ranked by its loss there. Pruning is exact for a non-increasing expected loss.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import numpy as np

from lrbs_tf.theory.nqm_dynamics import first_crossing

_CHUNK_ELEMENTS = 600_000  # candidates x coordinates held at once (about 5 MB per float64 array)


@dataclasses.dataclass(frozen=True)
class Tuned:
    """The best setting found for one (optimizer, batch size). steps is inf when no setting reached the
    target within max_steps (then lr, momentum, ema_decay and stationary_loss are nan). exact: steps is
    certainly the first crossing for this setting (a non-increasing loss, or every earlier step checked)."""
    optimizer: str
    batch_size: float
    steps: float
    lr: float
    momentum: float
    ema_decay: float
    stationary_loss: float
    evaluated: int = 0  # settings whose steps (or pruning) were computed
    exact: bool = True


class _Search:
    """The settings tried so far for one (optimizer, batch size) and the best step count among them.

    build(lrs (K,), seconds (K,)) -> dynamics; limits: second -> stability limit of lr (exclusive).
    """

    def __init__(self, build: Callable, target: float, limits: dict[float, float], upper: float | None,
                 max_steps: int, chunk: int):
        self.build, self.target, self.limits, self.max_steps, self.chunk = build, target, limits, max_steps, chunk
        self.best = np.inf if upper is None else float(upper)
        self.tried: dict[float, dict[float, tuple[float, float]]] = {s: {} for s in limits}

    def run(self, pairs: Iterable[tuple[float, float]]) -> None:
        """Evaluates the new (second, lr) pairs: exact steps, or inf with their loss at the bound."""
        pairs = [(s, a) for s, a in dict.fromkeys(pairs) if 0 < a < self.limits[s] and a not in self.tried[s]]
        for i in range(0, len(pairs), self.chunk):
            part = pairs[i:i + self.chunk]
            dyn = self.build(np.array([a for _, a in part]), np.array([s for s, _ in part]))
            cap = np.full(len(part), self.best) if np.isfinite(self.best) else None
            steps, score = first_crossing(dyn, self.target, cap, self.max_steps)
            for (s, a), n, sc in zip(part, steps, score):
                rank = -np.inf if np.isfinite(n) else (np.inf if np.isnan(sc) else float(sc))
                self.tried[s][a] = (float(n), rank)
            self.best = min(self.best, float(np.min(steps)))

    def ranked(self, s: float) -> tuple[tuple[float, float], float | None, list[float]]:
        """((steps, rank), lr, all tried lrs sorted) of the best lr for this second value: fewest steps,
        then, among the settings pruned against the bound, the lowest loss there. Ties in steps go to the
        middle of the tied lrs. lr is None when nothing ranks (all unstable or never below target)."""
        lrs = sorted(self.tried[s])
        keys = [self.tried[s][a] for a in lrs]
        if not keys or min(keys) >= (np.inf, np.inf):
            return (np.inf, np.inf), None, lrs
        top = min(keys)
        ties = [i for i, key in enumerate(keys) if key == top]
        return top, lrs[ties[len(ties) // 2]], lrs

    def up(self, s: float, a: float, ratio: float) -> float:
        """The next lr above a: a * ratio, or a quarter of the way from a to the limit near the limit."""
        limit = self.limits[s]
        return a * ratio if a * ratio < 0.9 * limit else limit - (limit - a) / 4.0

    def refine(self, seconds: Sequence[float], rounds: int) -> None:
        """Bisects (in log lr) the bracket around the best lr of each given second value, `rounds` times."""
        for _ in range(rounds):
            pairs = []
            for s in seconds:
                _, a, lrs = self.ranked(s)
                if a is None:
                    continue
                i = lrs.index(a)
                if i > 0:
                    pairs.append((s, float(np.sqrt(lrs[i - 1] * a))))
                pairs.append((s, float(np.sqrt(a * lrs[i + 1])) if i + 1 < len(lrs)
                              else self.up(s, a, 10.0 ** 0.125)))
            self.run(pairs)

    def result(self, name: str, batch_size: float, kind: str | None,
               stationary: Callable[[float, float], float]) -> Tuned:
        winner = None
        for s in self.tried:
            (n, _), a, _ = self.ranked(s)
            if a is not None and np.isfinite(n) and (winner is None or n < winner[0]):
                winner = (n, s, a)
        count = sum(len(v) for v in self.tried.values())
        if winner is None:
            return Tuned(name, batch_size, np.inf, np.nan, np.nan, np.nan, np.nan, count)
        n, s, a = winner
        return Tuned(name, batch_size, n, a, s if kind == "momentum" else 0.0, s if kind == "ema_decay" else 0.0,
                     stationary(a, s), count)


def _chunk(dim: int) -> int:
    return max(1, _CHUNK_ELEMENTS // dim)


def tune_grid(build: Callable, target: float, limits: dict[float, float], dim: int, *,
              lr_per_decade: int = 4, lr_decades: int = 6, refine_rounds: int = 6,
              upper: float | None = None, hint: tuple[float, float] | None = None,
              max_steps: int = 10 ** 9) -> _Search:
    """Global search: lr_per_decade log-spaced lrs per decade over lr_decades decades below each second
    value's stability limit, plus 1 - 10^-k (k = 1..4) of the limit (where the noise-free optimum sits);
    extended downwards by 3 decades while the best is the smallest lr (small batches need small lrs, up to
    18 decades); then refine_rounds bisections (in log lr) of the best lr's bracket.
    hint: (second, lr) evaluated first, e.g. the previous batch size's best, which reaches `upper`.
    """
    search = _Search(build, target, limits, upper, max_steps, _chunk(dim))

    def grid(s: float, first: int, last: int) -> list[tuple[float, float]]:
        return [(s, limits[s] * 10.0 ** (-j / lr_per_decade)) for j in range(first, last + 1)]

    edge = [(s, limits[s] * (1.0 - 10.0 ** -k)) for s in limits for k in (1, 2, 3, 4)]
    search.run(([hint] if hint else []) + edge + [p for s in limits for p in grid(s, 1, lr_per_decade * lr_decades)])
    decades = lr_decades
    while decades < 18:
        found = any(search.ranked(s)[1] is not None for s in limits)
        low = [s for s in limits if not found or search.ranked(s)[1] == min(search.tried[s])]
        if not low:
            break
        search.run([p for s in low for p in grid(s, lr_per_decade * decades + 1, lr_per_decade * (decades + 3))])
        decades += 3
    search.refine(list(limits), refine_rounds)
    return search


def tune_local(build: Callable, target: float, limits: dict[float, float], dim: int,
               seeds: Sequence[tuple[float, float]], *, ratio: float = 10.0 ** 0.25, keep: int = 3,
               refine_rounds: int = 4, max_expansions: int = 40, upper: float | None = None,
               max_steps: int = 10 ** 9) -> _Search:
    """Local search per second value from `seeds` (second, lr): evaluate each seed and its neighbours at
    lr * ratio^+-1; step outwards while a second value's best lr is its smallest or largest tried (at most
    max_expansions times); then bisect the bracket of the `keep` best second values refine_rounds times.
    The steps as a function of log lr are unimodal in every case we have looked at; a second optimum
    farther than the expansion would reach could be missed.
    """
    search = _Search(build, target, limits, upper, max_steps, _chunk(dim))
    start = []
    for s, a in seeds:
        a = min(a, limits[s] * (1.0 - 1e-4))
        start += [(s, a / ratio), (s, a), (s, search.up(s, a, ratio))]
    search.run(start)
    for _ in range(max_expansions):
        pairs = []
        for s in limits:
            _, a, lrs = search.ranked(s)
            if a is None or not lrs:
                continue
            if a == lrs[0]:
                pairs.append((s, a / ratio))
            if a == lrs[-1] and (limits[s] - a) > 1e-6 * limits[s]:
                pairs.append((s, search.up(s, a, ratio)))
        if not pairs:
            break
        search.run(pairs)
    order = sorted((search.ranked(s)[0], s) for s in limits if search.ranked(s)[1] is not None)
    search.refine([s for _, s in order[:keep]], refine_rounds)
    return search
