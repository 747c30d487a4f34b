"""Charts drawn on the server as inline SVG (no script, no library, nothing fetched): bars of
one figure per model, and latency histograms on a shared axis."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["PALETTE", "bars", "histograms"]

#: One colour per model, in order (Okabe-Ito: told apart with common colour blindness).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
WIDTH = 520
LABEL = 170  # room for a model's name left of its bar
ROW = 26


def _clip(text: str, chars: int = 26) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def bars(items: Sequence[tuple[str, float | None, str]], title: str) -> Markup:
    """Horizontal bars, one per ``(label, value, shown text)``; a None value draws no bar."""
    values = [v for _, v, _ in items if v is not None and math.isfinite(v)]
    top = max(values, default=0.0) or 1.0
    span = WIDTH - LABEL - 90
    height = ROW * len(items) + 8
    out = [
        f'<svg class="chart" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for i, (label, value, shown) in enumerate(items):
        y = 4 + i * ROW
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<text x="{LABEL - 8}" y="{y + 17}" text-anchor="end" class="label">{escape(_clip(label))}</text>')
        width = 0.0 if value is None or not math.isfinite(value) else max(1.0, span * value / top)
        if width:
            out.append(f'<rect class="bar" x="{LABEL}" y="{y + 3}" width="{width:.1f}" height="{ROW - 8}" rx="2" fill="{colour}"/>')
        out.append(f'<text x="{LABEL + width + 6:.1f}" y="{y + 17}" class="value">{escape(shown)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _nice(value: float) -> float:
    """The round number at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def histograms(series: Sequence[tuple[str, Sequence[float]]], bins: int = 30) -> Markup:
    """One small histogram per ``(label, latencies in ms)``, all on one axis from 0 to a round
    number above the largest p99 (slower rows are counted in the last bar)."""
    tails = []
    for _, values in series:
        ordered = sorted(values)
        if ordered:
            tails.append(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])
    top = _nice(max(tails, default=1.0))
    step = top / bins
    panel, plot = 96, 64
    height = panel * len(series) + 22
    left, right = 60, WIDTH - 10
    span = right - left
    out = [
        f'<svg class="chart" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>Latency distribution of ok rows, per model</title>'
    ]
    for i, (label, values) in enumerate(series):
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, max(0, int(v / step)))] += 1
        most = max(counts) or 1
        y0 = i * panel + 18
        base = y0 + plot
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<text x="{left}" y="{y0 - 4}" class="label">{escape(_clip(label, 60))} · {len(values):,} ok rows</text>')
        out.append(f'<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" class="axis"/>')
        out.append(f'<text x="{left - 6}" y="{y0 + 10}" text-anchor="end" class="tick">{most:,}</text>')
        w = span / bins
        for b, n in enumerate(counts):
            if n:
                h = max(1.0, plot * n / most)
                out.append(
                    f'<rect class="bar" x="{left + b * w + 0.5:.1f}" y="{base - h:.1f}" width="{w - 1:.1f}" height="{h:.1f}" fill="{colour}">'
                    f"<title>{b * step:,.0f}–{(b + 1) * step:,.0f} ms: {n:,} rows</title></rect>"
                )
    axis_y = height - 4
    for t in range(5):
        x = left + span * t / 4
        anchor = "end" if t == 4 else "middle"
        out.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="{anchor}" class="tick">{top * t / 4:,.0f}{" ms" if t == 4 else ""}</text>')
    out.append("</svg>")
    return Markup("".join(out))
