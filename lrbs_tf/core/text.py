"""Words in user-facing text that depend on a count: one place, so no binary prints "1 runs"."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 run', '2 runs', '0 runs'; `many` for irregular plurals ('1 process', '3 processes')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
