"""The building blocks every figure of the report shares: plotly's layout (margins, legend,
axes), the colour scales over batch size and learning rate, error bars of ±1 SE, and
intervals in words.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LOG_B = {"type": "log", "title": {"text": "batch size B (examples, log scale)"}}
MARGIN = {"l": 70, "r": 30, "t": 60, "b": 60}
# The legend sits at the foot of the figure (container coordinates), below the x-axis titles,
# and axes grow their margins to fit their titles, so neither is clipped nor overlaps.
LEGEND = {"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0}
AXES = {"automargin": True}


def figure(**layout):
    """An empty plotly figure in the report's style; `layout` adds to or overrides it."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(**{"template": "plotly_white", "height": 480, "margin": MARGIN, "legend": LEGEND, **layout})
    fig.update_xaxes(**AXES)
    fig.update_yaxes(**AXES)
    return fig


def subplots(titles: Sequence[str], **layout):
    """Side-by-side panels, one per title, in the report's style."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.14)
    fig.update_layout(template="plotly_white", height=500, margin=MARGIN, legend=LEGEND, **layout)
    fig.update_xaxes(**AXES)
    fig.update_yaxes(**AXES)
    return fig


B_SCALE_END = 0.85  # of Plasma: its pale end is skipped, so every B stays visible on white


def b_scale(sizes: Sequence[int]) -> dict:
    """A marker colour scale over log2(B), min to max of `sizes`, its colour bar reading in B."""
    from plotly.colors import sample_colorscale

    log = np.log2(np.array(sizes, float))
    lo, hi = float(log.min()), float(log.max())
    hi = hi if hi > lo else lo + 1
    stops = np.linspace(0, 1, 11)
    ticks = np.arange(np.ceil(lo), np.floor(hi) + 1)
    return {"colorscale": [[float(t), c] for t, c in zip(stops, sample_colorscale("Plasma",
                                                                                    (stops * B_SCALE_END).tolist()))],
            "cmin": lo, "cmax": hi,
            "colorbar": {"title": {"text": "B"}, "tickvals": ticks.tolist(),
                         "ticktext": [f"{2 ** t:.0f}" for t in ticks], "x": 1.02}}


def b_markers(batch_size: int, n: int, scale: dict, colorbar: bool) -> dict:
    """n markers coloured by B on the shared scale; the colour bar on one trace only."""
    return {"color": [float(np.log2(batch_size))] * n, "size": 6, "showscale": colorbar, **scale}


def lr_marker(lr: list[float], symbol: str, colorbar: bool, scale_of: list[float] | None = None) -> dict:
    """Markers coloured by log10(lr) over the range of `scale_of` (default: lr); the colour bar reads in lr."""
    log = np.log10(np.array(lr, float))
    span = np.log10(np.array(scale_of if scale_of is not None else lr, float))
    ticks = np.unique(np.log10(np.geomspace(10 ** span.min(), 10 ** span.max(), 4)))
    return {"color": log.tolist(), "colorscale": "Viridis", "cmin": span.min(), "cmax": span.max(), "size": 10,
            "symbol": symbol, "line": {"width": 1, "color": "#333"}, "showscale": colorbar,
            "colorbar": {"title": {"text": "lr"}, "tickvals": ticks.tolist(),
                         "ticktext": [f"{10 ** t:.3g}" for t in ticks], "x": 1.02}}


def error_y(se: Sequence[float | None], y: Sequence[float] | None = None, top: float | None = None) -> dict | None:
    """Plotly error bars of +-1 SE (none where the SE is unknown); None when no point has one.
    With `top` (1.0 for an accuracy) a bar stops there: an accuracy's interval ends at 1."""
    if all(e is None for e in se):
        return None
    bars = {"type": "data", "array": [e or 0 for e in se], "visible": True, "thickness": 1.2, "width": 3}
    if top is not None and y is not None:
        bars.update(symmetric=False, arrayminus=bars["array"],
                    array=[max(0.0, min(e or 0, top - v)) for e, v in zip(se, y)])
    return bars


def interval_text(ci: dict | None, spec: str = ".3g") -> str:
    """'95% CI a to b' (ci_high None: unbounded), '' without an interval."""
    if not ci:
        return ""
    high = "unbounded" if ci["ci_high"] is None else format(ci["ci_high"], spec)
    return f"{ci['level']:.0%} CI {format(ci['ci_low'], spec)} to {high}"


def batch_colours(sizes: Sequence[int]) -> list[str]:
    """One Plasma colour per batch size, spread over log2(B)."""
    from plotly.colors import sample_colorscale

    if not sizes:
        return []
    log = np.log2(np.array(sizes, float))
    span = log.max() - log.min()
    where = (log - log.min()) / span * 0.85 if span else np.full_like(log, 0.4)  # 0.85: skip Plasma's pale end
    return sample_colorscale("Plasma", where.tolist())


def epoch_tick(epochs: Sequence[int]) -> int:
    """Whole-epoch ticks, at most about 15 of them."""
    return max(1, math.ceil(max(epochs, default=1) / 15))

