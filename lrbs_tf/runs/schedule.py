"""Learning-rate and batch-size step schedules: bin/train's `--schedule`, its syntax, its canonical text, its
run-name suffix, and each epoch's learning rate and batch size.

One flag holds both kinds, so one setting (one `bin/sweep --grid=schedule=...` axis) can name every variant of
Smith et al. (2018)'s comparison:

    ''  or  'none'           constant learning rate and batch size (the default: He et al.'s protocol)
    'lr*0.2@10:20'           the learning rate times 0.2 after epoch 10 and again after epoch 20
    'bs*5@10:20'             the batch size times 5 after epochs 10 and 20 (the learning rate constant)
    'lr*0.2@10+bs*5@20'      both: each term multiplies its setting by its factor at each of its epochs

`@E` means "after E epochs": epochs E+1 on (1-based, as metrics.jsonl counts them) use the new value, and a
factor applies once per epoch listed, so after k of them the setting is multiplied by factor**k. No commas,
so a list of schedules can be a comma list. The canonical text (the learning-rate term first, factors as
run names write learning rates, epochs ascending) is what config.json records and runs compare by.

Pure Python: no TensorFlow, so flags and configurations are checked in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
import re

from lrbs_tf.core.errors import UsageError

NONE = "none"        # a constant schedule may be written so (recorded as '')
KINDS = ("lr", "bs")  # the settings a schedule multiplies: the learning rate, the batch size
_TERM = re.compile(r"(lr|bs)\*([^@]+)@([0-9:]+)")
# The run-name form of the schedule's text: the characters a folder name should not hold, mapped.
_NAME_CHARS = {"*": "x", "@": "at", ":": "_"}


@dataclasses.dataclass(frozen=True)
class Step:
    """One term: multiply `kind` by `factor` after each of `epochs` (ascending, >= 1)."""
    kind: str
    factor: float
    epochs: tuple[int, ...]

    def text(self) -> str:
        return f"{self.kind}*{self.factor:.10g}@{':'.join(map(str, self.epochs))}"

    def multiplier(self, epoch: int) -> float:
        """The factor in force in epoch `epoch` (0-based): factor ** (milestones already passed)."""
        return self.factor ** sum(1 for e in self.epochs if e <= epoch)


def parse(text: str | None) -> dict[str, Step]:
    """The schedule's terms by kind ({} for a constant one); UsageError naming what is wrong."""
    text = (text or "").strip()
    if text in ("", NONE):
        return {}
    steps: dict[str, Step] = {}
    for term in text.split("+"):
        match = _TERM.fullmatch(term.strip())
        if not match:
            raise UsageError(f"schedule={text!r}: cannot read {term!r}; write KIND*FACTOR@EPOCH:EPOCH..., KIND "
                             "lr or bs, terms joined by '+' (e.g. lr*0.2@10:20, bs*5@10:20, lr*0.2@10+bs*5@20)")
        kind, factor_text, epochs_text = match.groups()
        try:
            factor = float(factor_text)
        except ValueError:
            raise UsageError(f"schedule={text!r}: factor {factor_text!r} of {kind} is not a number") from None
        if not (math.isfinite(factor) and factor > 0) or factor == 1:
            raise UsageError(f"schedule={text!r}: the {kind} factor must be a finite number > 0 other than 1, "
                             f"not {factor_text}")
        try:
            epochs = tuple(int(e) for e in epochs_text.split(":"))
        except ValueError:
            raise UsageError(f"schedule={text!r}: epochs {epochs_text!r} of {kind} must be integers joined by "
                             "':'") from None
        if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
            raise UsageError(f"schedule={text!r}: the epochs of {kind} ({epochs_text}) must be >= 1, ascending, "
                             "each once")
        if kind in steps:
            raise UsageError(f"schedule={text!r} has two {kind} terms; give one, its epochs joined by ':'")
        steps[kind] = Step(kind, factor, epochs)
    return steps


def canonical(text: str | None) -> str:
    """The recorded form: '' for a constant schedule, else the terms in KINDS order with plain numbers."""
    steps = parse(text)
    return "+".join(steps[k].text() for k in KINDS if k in steps)


def name_suffix(text: str) -> str:
    """The run name's part for a (canonical) schedule: '' for none, else e.g. '-lrx0.2at10_20+bsx5at20'."""
    if not text:
        return ""
    return "-" + "".join(_NAME_CHARS.get(c, c) for c in text)


def lr_multiplier(text: str, epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) over the initial one."""
    step = parse(text).get("lr")
    return step.multiplier(epoch) if step else 1.0


def batch_size_at(text: str, batch_size: int, epoch: int) -> float:
    """The batch size of epoch `epoch` (0-based), a float: `check_batch_sizes` makes sure it is whole."""
    step = parse(text).get("bs")
    return batch_size * step.multiplier(epoch) if step else batch_size


def whole_batch_size(text: str, batch_size: int, epoch: int) -> int:
    return int(round(batch_size_at(text, batch_size, epoch)))


def last_epoch(text: str) -> int:
    """The latest epoch any term changes a setting after (0 for a constant schedule)."""
    return max((max(s.epochs) for s in parse(text).values()), default=0)


def check(text: str, batch_size: int, epochs: int) -> None:
    """UsageError when a change falls at or after the run's last epoch (it would never apply) or when the
    batch size it reaches is not a whole number."""
    steps = parse(text)
    for step in steps.values():
        if step.epochs[-1] >= epochs:
            raise UsageError(f"schedule={text!r}: {step.kind} changes after epoch {step.epochs[-1]}, but the run "
                             f"trains {epochs} epochs; changes must come before its last epoch")
    if "bs" in steps:
        for k in range(1, len(steps["bs"].epochs) + 1):
            value = batch_size * steps["bs"].factor ** k
            if abs(value - round(value)) > 1e-9 * max(1.0, value) or round(value) < 1:
                raise UsageError(f"schedule={text!r}: batch_size={batch_size} times {steps['bs'].factor:g}^{k} "
                                 f"is {value:g}, not a whole batch size")


def batch_sizes(text: str, batch_size: int) -> list[int]:
    """Every batch size the schedule trains with, the initial one first."""
    steps = parse(text)
    if "bs" not in steps:
        return [batch_size]
    return [int(round(batch_size * steps["bs"].factor ** k)) for k in range(len(steps["bs"].epochs) + 1)]
