"""Markdown formatting shared by the sections of report.md (report, report_ratio): p-values, coefficients,
tables. Leaf module: nothing here knows the Analysis."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def fmt_p(p: float, alpha: float, p_holm: float = math.nan) -> str:
    """'**2.6e-11***': bold when p < alpha, '*' when also Holm-adjusted p < alpha; '—' when untestable."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    text = "< 1e-300" if p == 0 else f"{p:.1e}"  # scipy gives exactly 0 for |rho| = 1 and on underflow
    if p < alpha:
        text = f"**{text}**" + ("\\*" if p_holm < alpha else "")
    return text


def fmt_coef(value: float, reason: str = "") -> str:
    if isinstance(value, float) and math.isnan(value):
        return f"n/a ({reason})" if reason else "—"
    return f"{value:.2f}"


LIST_LIMIT = 40  # rows of a list or table in report.md; the CSV files always hold every one


def cut(items: list, what: str, where: str) -> tuple[list, str]:
    """The first LIST_LIMIT of `items`, and a note saying how many more `what` there are and in which file
    (`where`) they all are; the note is empty when nothing is cut."""
    if len(items) <= LIST_LIMIT:
        return items, ""
    return items[:LIST_LIMIT], f"\n\n… and {len(items) - LIST_LIMIT} more {what} ({where} lists every one)."


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
