"""A small line plot as inline SVG, written on the server: no script, no build step, nothing the
Content-Security-Policy has to allow."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Mapping, Sequence

COLOURS = {"p50": "#1971c2", "p99": "#e03131", "sent": "#2b8a3e", "skipped": "#868e96", "deferred": "#e8590c", "bounced": "#c92a2a",
           "poison": "#862e9c", "exhausted": "#5c3d0e", "in_doubt": "#1971c2"}


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per x step, oldest first; None leaves a gap


def _nice(top: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above ``top``: axis labels a person reads at a glance."""
    if top <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= top:
        step *= 10
    while step > top:
        step /= 10
    for m in (1, 2, 5, 10):
        if m * step >= top:
            return m * step
    return 10 * step


def line_plot(series: Sequence[Series], *, x_labels: Mapping[int, str], title: str, unit: str,
              width: int = 760, height: int = 240, plot_id: str = "plot") -> str:
    left, right, top, bottom = 56, 28, 22, 28
    w, h = width - left - right, height - top - bottom
    steps = max((len(s.values) for s in series), default=0)
    y_max = _nice(max((v for s in series for v in s.values if v is not None), default=0.0))

    def x(i: int) -> float:
        return left + (w * i / max(steps - 1, 1))

    def y(v: float) -> float:
        return top + h - h * v / y_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(plot_id)}" class="plot" role="img"'
           f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>"]
    for frac in (0, 0.5, 1):
        v = y_max * frac
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#dee2e6"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11"'
                   f' fill="#495057">{v:g}</text>')
    out.append(f'<text x="{left}" y="11" font-size="11" fill="#495057">{escape(unit)}</text>')
    for i, label in sorted(x_labels.items()):
        out.append(f'<text x="{x(i):.1f}" y="{height - 8}" text-anchor="middle" font-size="11"'
                   f' fill="#495057">{escape(label)}</text>')
    for s in series:
        colour = COLOURS.get(s.name, "#343a40")
        for run in _runs(s.values):  # one line per stretch without a gap
            if len(run) == 1:
                i, v = run[0]
                out.append(f'<circle class="series" data-series="{escape(s.name)}" cx="{x(i):.1f}" cy="{y(v):.1f}"'
                           f' r="2" fill="{colour}"><title>{escape(s.name)}</title></circle>')
                continue
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            out.append(f'<polyline class="series" data-series="{escape(s.name)}" fill="none" stroke="{colour}"'
                       f' stroke-width="1.6" points="{points}"><title>{escape(s.name)}</title></polyline>')
    out.append("</svg>")
    return "".join(out)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, v))
    return [r for r in runs if r]
