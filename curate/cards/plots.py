"""PNG plots of a card, drawn from its facts with matplotlib's Agg canvas (no display, no pyplot
global state). Every plot has a fixed pixel size so cards look alike from run to run."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from curate.cards.facts import BUCKET_ORDER, Facts

DPI = 100
# name -> (width, height) in pixels
PLOT_SIZES: dict[str, tuple[int, int]] = {
    "token_lengths": (1400, 1000),
    "pass_rate": (1200, 900),
    "funnel": (1200, 700),
    "contamination": (1000, 600),
}
MAX_PANELS = 12
_LABEL_CHARS = 42


def _label(text: str, chars: int = _LABEL_CHARS) -> str:
    text = str(text)
    return text if len(text) <= chars else "…" + text[-(chars - 1):]


def _figure(name: str, *, constrained: bool = True):
    from matplotlib.figure import Figure

    width, height = PLOT_SIZES[name]
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained" if constrained else None)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    # no bbox_inches="tight": it would change the pixel size; metadata pinned so bytes are stable
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def token_lengths(facts: Facts) -> bytes | None:
    from matplotlib.ticker import NullLocator

    arrays = {t: a for t, a in facts.token_lengths.items() if len(a)}
    if not arrays or facts["tokens"] is None:
        return None
    ranked = sorted(arrays, key=lambda t: (-len(arrays[t]), t))
    panels = {t: arrays[t] for t in ranked[:MAX_PANELS]}
    rest = ranked[MAX_PANELS:]
    if rest:
        panels[f"{len(rest)} other teachers"] = np.concatenate([arrays[t] for t in rest])
    values = np.concatenate(list(panels.values()))
    low, high = max(int(values.min()), 1), max(int(values.max()), 2)
    log = high / low > 50
    bins = np.geomspace(low, high, 40) if log else np.linspace(0, high, 40)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    # a grid of many small panels: fixed margins (constrained layout costs seconds here)
    fig = _figure("token_lengths", constrained=False)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.06, top=0.92, wspace=0.28, hspace=0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, squeeze=False)).ravel()
    for ax, (teacher, data) in zip(axes, panels.items(), strict=False):
        ax.hist(np.clip(data, low, None) if log else data, bins=bins, color="#4C72B0", edgecolor="white", linewidth=0.4)
        ax.set_title(f"{_label(teacher, 34)} (n={len(data):,})", fontsize=9)
        ax.axvline(float(np.median(data)), color="#C44E52", linewidth=1, linestyle="--")
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks on many panels cost seconds
        ax.set_xlabel("tokens per trace", fontsize=8)
        ax.set_ylabel("traces", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=True)  # shared x, but every panel keeps its scale
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Token length per teacher, curated set (dashed: median; {facts['tokens']['measure']})", fontsize=11)
    return _png(fig)


def pass_rate(facts: Facts) -> bytes | None:
    diff = facts["difficulty"]
    if diff and diff.get("by_teacher"):
        return _pass_rate_heatmap(diff["by_teacher"])
    ver = facts["verification"]
    if not ver:
        return None
    per_teacher: dict[str, list[int]] = {}
    for row in ver["by_group"]:
        acc = per_teacher.setdefault(row["teacher"], [0, 0])
        acc[0] += row["verified"]
        acc[1] += row["traces"]
    names = sorted(per_teacher)
    rates = [100 * per_teacher[t][0] / per_teacher[t][1] if per_teacher[t][1] else 0 for t in names]
    fig = _figure("pass_rate")
    ax = fig.subplots()
    bars = ax.barh([_label(t) for t in names], rates, color="#55A868")
    ax.bar_label(bars, labels=[f"{r:.1f}%" for r in rates], fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("pass rate (% of traces verified correct)")
    ax.set_ylabel("teacher")
    ax.set_title("Pass rate per teacher (all scored traces)")
    return _png(fig)


def _pass_rate_heatmap(rows: list[dict]) -> bytes:
    teachers = sorted({r["teacher"] for r in rows})
    present = {r["bucket"] for r in rows}
    buckets = [b for b in BUCKET_ORDER if b in present] + sorted(present - set(BUCKET_ORDER))
    grid = np.full((len(teachers), len(buckets)), np.nan)
    counts = np.zeros_like(grid)
    for r in rows:
        i, j = teachers.index(r["teacher"]), buckets.index(r["bucket"])
        grid[i, j] = 100 * r["pass_rate"]
        counts[i, j] = r["traces"]
    fig = _figure("pass_rate")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    small = len(teachers) * len(buckets) <= 240
    for i in range(len(teachers)):
        for j in range(len(buckets)):
            if small and not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}% (n={int(counts[i, j])})", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 60 else "black")
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_yticks(range(len(teachers)), [_label(t) for t in teachers], fontsize=8)
    ax.set_xlabel("difficulty bucket (share of teachers solving the problem)")
    ax.set_ylabel("teacher")
    ax.set_title("Pass rate per teacher and difficulty bucket (all scored traces)")
    fig.colorbar(image, ax=ax, label="pass rate (% of traces verified correct)")
    return _png(fig)


def funnel_stages(facts: Facts) -> list[tuple[str, int]]:
    """(label, rows left) from the first step's output through every row-changing step; selection
    is expanded into its rules."""
    fun = facts["funnel"]
    steps = fun["steps"]
    out = [(f"{steps[0]['step']} (out)", steps[0]["rows_out"])]
    rules = fun["rules"]
    for step in steps[1:]:
        if step["stage"] == "select" and rules and step["step"] == facts["overview"]["curated_step"]:
            out += [(f"{step['stage']}: {r['rule']}", r["rows_left"]) for r in rules["rules"]]
        elif step["rows_out"] != step["rows_in"] or step["rejected"]:
            out.append((step["step"], step["rows_out"]))
    return out


def funnel(facts: Facts) -> bytes | None:
    stages = funnel_stages(facts)
    if not stages:
        return None
    fig = _figure("funnel")
    ax = fig.subplots()
    labels = [_label(s) for s, _ in stages]
    values = [v for _, v in stages]
    bars = ax.barh(labels, values, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.12 or 1)
    ax.set_xlabel("rows left (traces)")
    ax.set_ylabel("step / selection rule")
    ax.set_title("Funnel: rows left after each step and selection rule")
    return _png(fig)


def contamination(facts: Facts) -> bytes | None:
    con = facts["contamination"]
    if con is None:
        return None
    hits = {r["benchmark"]: r for r in con["hits"]}
    names = list(con["checked"]) or ["(none)"]
    traces = [hits[n]["traces"] if n in hits else 0 for n in names]
    problems = [hits[n]["problems"] or 0 if n in hits else 0 for n in names]
    fig = _figure("contamination")
    ax = fig.subplots()
    x = np.arange(len(names))
    b1 = ax.bar(x - 0.2, traces, 0.4, label="traces flagged", color="#C44E52")
    b2 = ax.bar(x + 0.2, problems, 0.4, label="problems flagged", color="#DD8452")
    ax.bar_label(b1, labels=[f"{v:,}" for v in traces], fontsize=8)
    ax.bar_label(b2, labels=[f"{v:,}" for v in problems], fontsize=8)
    ax.set_xticks(x, [_label(n) for n in names], rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, max([*traces, *problems, 1]) * 1.15)
    ax.set_xlabel("benchmark checked")
    ax.set_ylabel("count (scored set, before selection)")
    ax.set_title("Contamination hits per benchmark" + ("" if any(traces) else ": none found"))
    ax.legend()
    return _png(fig)


PLOTS: dict[str, tuple[str, Callable[[Facts], bytes | None]]] = {
    "token_lengths": ("Token length per teacher", token_lengths),
    "pass_rate": ("Pass rate per teacher and difficulty", pass_rate),
    "funnel": ("Funnel", funnel),
    "contamination": ("Contamination hits per benchmark", contamination),
}


def render_plots(facts: Facts) -> dict[str, bytes]:
    """name -> PNG bytes for every plot the run has data for."""
    out = {}
    for name, (_title, draw) in PLOTS.items():
        png = draw(facts)
        if png is not None:
            out[name] = png
    return out
