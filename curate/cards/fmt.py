"""How numbers are written in cards and reports (tests format their own numbers the same way)."""

from __future__ import annotations

DASH = "—"


def num(value: int | float | None) -> str:
    return DASH if value is None else f"{int(value):,}"


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal."""
    return DASH if value is None else f"{100 * value:.1f}%"


def share(part: int, whole: int) -> str:
    return pct(part / whole) if whole else DASH


def tokens(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def score(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def md_cell(text: object) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|") or DASH
