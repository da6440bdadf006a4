"""Drawing the sweep report: report dict -> one self-contained HTML page.

Reads nothing but the report dict (report.json's content): every number on the page comes
from there. plotly.js is inlined once, so the page opens offline and asks the network nothing.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from importlib import resources

import numpy as np

from ..profile.measure import KEYS as PROFILE_KEYS
from ..profile.measure import sentences
from .summary import fmt, octave_trend_sentence

TEMPLATE = "report_page.html"  # in the sgdtune package folder, beside the other page templates


LOG_B = {"type": "log", "title": {"text": "batch size B (examples, log scale)"}}
MARGIN = {"l": 70, "r": 30, "t": 60, "b": 60}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# The legend sits at the foot of the figure (container coordinates), below the x-axis titles,
# and axes grow their margins to fit their titles, so neither is clipped nor overlaps.
LEGEND = {"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0}
AXES = {"automargin": True}


def _figure(**layout):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(**{"template": "plotly_white", "height": 480, "margin": MARGIN, "legend": LEGEND, **layout})
    fig.update_xaxes(**AXES)
    fig.update_yaxes(**AXES)
    return fig


def _subplots(titles: Sequence[str], **layout):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.14)
    fig.update_layout(template="plotly_white", height=500, margin=MARGIN, legend=LEGEND, **layout)
    fig.update_xaxes(**AXES)
    fig.update_yaxes(**AXES)
    return fig


B_SCALE_END = 0.85  # of Plasma: its pale end is skipped, so every B stays visible on white


def _b_scale(sizes: Sequence[int]) -> dict:
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


def _b_markers(batch_size: int, n: int, scale: dict, colorbar: bool) -> dict:
    """n markers coloured by B on the shared scale; the colour bar on one trace only."""
    return {"color": [float(np.log2(batch_size))] * n, "size": 6, "showscale": colorbar, **scale}


def _lr_marker(lr: list[float], symbol: str, colorbar: bool, scale_of: list[float] | None = None) -> dict:
    """Markers coloured by log10(lr) over the range of `scale_of` (default: lr); the colour bar reads in lr."""
    log = np.log10(np.array(lr, float))
    span = np.log10(np.array(scale_of if scale_of is not None else lr, float))
    ticks = np.unique(np.log10(np.geomspace(10 ** span.min(), 10 ** span.max(), 4)))
    return {"color": log.tolist(), "colorscale": "Viridis", "cmin": span.min(), "cmax": span.max(), "size": 10,
            "symbol": symbol, "line": {"width": 1, "color": "#333"}, "showscale": colorbar,
            "colorbar": {"title": {"text": "lr"}, "tickvals": ticks.tolist(),
                         "ticktext": [f"{10 ** t:.3g}" for t in ticks], "x": 1.02}}


def _error_y(se: Sequence[float | None], y: Sequence[float] | None = None, top: float | None = None) -> dict | None:
    """Plotly error bars of +-1 SE (none where the SE is unknown); None when no point has one.
    With `top` (1.0 for an accuracy) a bar stops there: an accuracy's interval ends at 1."""
    if all(e is None for e in se):
        return None
    bars = {"type": "data", "array": [e or 0 for e in se], "visible": True, "thickness": 1.2, "width": 3}
    if top is not None and y is not None:
        bars.update(symmetric=False, arrayminus=bars["array"],
                    array=[max(0.0, min(e or 0, top - v)) for e, v in zip(se, y)])
    return bars


def _interval_text(ci: dict | None, spec: str = ".3g") -> str:
    """'95% CI a to b' (ci_high None: unbounded), '' without an interval."""
    if not ci:
        return ""
    high = "unbounded" if ci["ci_high"] is None else format(ci["ci_high"], spec)
    return f"{ci['level']:.0%} CI {format(ci['ci_low'], spec)} to {high}"


def _batch_colours(sizes: Sequence[int]) -> list[str]:
    from plotly.colors import sample_colorscale

    if not sizes:
        return []
    log = np.log2(np.array(sizes, float))
    span = log.max() - log.min()
    where = (log - log.min()) / span * 0.85 if span else np.full_like(log, 0.4)  # 0.85: skip Plasma's pale end
    return sample_colorscale("Plasma", where.tolist())


def _epoch_tick(epochs: Sequence[int]) -> int:
    """Whole-epoch ticks, at most about 15 of them."""
    return max(1, math.ceil(max(epochs, default=1) / 15))


def fig_accuracy(a: dict, po: dict | None = None):
    """val_acc, train_acc and the gap against B; the best per octave (`po`: report["per_octave"]),
    and its fitted trend over the octaves only where the fit found one."""
    import plotly.graph_objects as go

    fig = _subplots(["val_acc and train_acc (colour: lr)", "generalization gap = train_acc - val_acc"])
    hover = [f"trial {n}<br>B {b}<br>lr {lr:.3g}<br>{bu} {s}" for n, b, lr, bu, s in
             zip(a["number"], a["batch_size"], a["lr"], a["budget"], a["budget_size"])]
    for key, name, symbol, bar, se in (("final_val_acc", "val_acc ± 1 SE", "circle", True, a["final_val_acc_se"]),
                                       ("final_train_acc", "train_acc", "diamond-open", False, [])):
        fig.add_trace(go.Scatter(x=a["batch_size"], y=a[key], mode="markers", name=name, text=hover,
                                 hovertemplate="%{text}<br>" + name + " %{y:.4f}<extra></extra>",
                                 error_y=_error_y(se, a[key], 1.0) if se else None,
                                 marker=_lr_marker(a["lr"], symbol, bar)), row=1, col=1)
    if po:
        has = [i for i, v in enumerate(po["best_val_acc"]) if v is not None]
        best = {"batch_size": [po["best_batch_size"][i] for i in has], "number": [po["best_number"][i] for i in has],
                "final_val_acc": [po["best_val_acc"][i] for i in has],
                "final_val_acc_se": [po["best_val_acc_se"][i] for i in has]}
        name = "best val_acc per octave of B"
    else:
        best, name = a["best_per_batch"], "best val_acc per B"
    fig.add_trace(go.Scatter(x=best["batch_size"], y=best["final_val_acc"], mode="lines", name=name,
                             text=[f"trial {n}" for n in best["number"]], line={"color": "#d62728", "width": 1.5},
                             error_y=_error_y(best["final_val_acc_se"], best["final_val_acc"], 1.0),
                             hovertemplate="%{text}<br>best val_acc %{y:.4f}<extra></extra>"), row=1, col=1)
    fit = (po or {}).get("fit", {})
    if fit.get("trend"):
        ci = _interval_text(fit["ci"], "+.4f")  # the line over every complete trial (sections.octave_trend)
        fig.add_trace(go.Scatter(x=fit["line"]["batch_size"], y=fit["line"]["val_acc"], mode="lines",
                                 line={"color": "#111", "dash": "dash"},
                                 name=f"trend {fit['gain_per_doubling']:+.4f} per doubling ({ci})"), row=1, col=1)
    fig.add_trace(go.Scatter(x=a["batch_size"], y=a["final_gen_gap"], mode="markers", name="gen_gap", text=hover,
                             hovertemplate="%{text}<br>gap %{y:+.4f}<extra></extra>",
                             marker=_lr_marker(a["lr"], "square", False)), row=1, col=2)
    fig.update_xaxes(**LOG_B)
    fig.update_yaxes(title_text="accuracy (fraction correct)", row=1, col=1)
    fig.update_yaxes(title_text="train_acc - val_acc (fraction)", zerolinecolor="#999", row=1, col=2)
    return fig


def fig_learning_curves(lc: dict):
    import plotly.graph_objects as go

    fig = _subplots(["val_acc by epoch (colour: B)", "val_acc by update (colour: B)"], showlegend=False)
    sizes = [c["batch_size"] for c in lc["trials"]]
    scale = _b_scale(sizes)
    for i, (c, colour) in enumerate(zip(lc["trials"], _batch_colours(sizes))):
        name = f"B = {c['batch_size']} (trial {c['number']}, lr {c['lr']:.3g})"
        for col, x in ((1, c["epoch"]), (2, c["updates"])):
            fig.add_trace(go.Scatter(x=x, y=c["val_acc"], mode="lines+markers", name=name, line={"color": colour},
                                     marker=_b_markers(c["batch_size"], len(x), scale, i == 0 and col == 1)),
                          row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=_epoch_tick([e for c in lc["trials"] for e in c["epoch"]]), row=1, col=1)
    fig.update_xaxes(title_text="updates (log scale)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="val_acc (fraction correct)")
    return fig


def fig_loss_noise(ln: dict):
    import plotly.graph_objects as go

    fitted = "slope" in ln and ln.get("trend", True)
    ci = _interval_text(ln.get("slope_ci"), "+.2f")
    if fitted:
        title = (f"Loss noise against batch size: fitted slope {ln['slope']:+.2f}"
                 f"{f' ({ci})' if ci else ''}, theory {ln['theory_slope']}")
    elif "slope" in ln:
        title = (f"Loss noise against batch size: no trend (slope {ln['slope']:+.2f}"
                 f"{f', {ci} includes 0' if ci else ''}; no line drawn)")
    else:
        title = f"Loss noise against batch size (no fit: {ln['fit_skipped']})"
    fig = _figure(title={"text": title, "font": {"size": 14}})
    fig.add_trace(go.Scatter(x=ln["batch_size"], y=ln["loss_noise"], mode="markers", name="trials (colour: lr)",
                             text=[f"trial {n}" for n in ln["number"]], marker=_lr_marker(ln["lr"], "circle", True)))
    if fitted:
        fig.add_trace(go.Scatter(x=ln["fit_line"]["batch_size"], y=ln["fit_line"]["loss_noise"], mode="lines",
                                 name=f"least-squares fit, slope {ln['slope']:+.2f}{f' ({ci})' if ci else ''}",
                                 line={"color": "#d62728"}))
    if "theory_line" in ln:  # a reference, drawn with or without a trend in the data
        fig.add_trace(go.Scatter(x=ln["theory_line"]["batch_size"], y=ln["theory_line"]["loss_noise"], mode="lines",
                                 name=f"theory on a fixed model, slope {ln['theory_slope']}",
                                 line={"color": "#555", "dash": "dash"}))
    fig.update_xaxes(**LOG_B)
    fig.update_yaxes(type="log", title_text="loss noise (std of mini-batch loss, nats, log scale)")
    return fig


def fig_grad_noise(gn: dict):
    """Per-epoch curves (from MLflow) beside the final value against B, with the critical batch size."""
    import plotly.graph_objects as go

    c = gn["critical_batch_size"]
    if c.get("value") is not None:
        value, name = c["value"], f"critical batch size B_crit ~ {c['value']:.3g} ({c['source']})"
    else:  # B_simple: a noise scale, drawn as such (never as a critical batch size)
        value = gn["b_simple"]["value"]
        name = f"median final B_simple {'>= ' * gn['b_simple']['lower_bound']}{value:.3g} (a noise scale)"
    crit = {"mode": "lines", "line": {"dash": "dash", "color": "#333"}, "name": name}
    curves = gn["curves"]
    titles = ["over training (colour: B)", "at the end of training, by batch size"]
    fig = _subplots(titles if curves else titles[1:])
    f = gn["final"]
    scale = _b_scale([k["batch_size"] for k in curves] + list(f["batch_size"]))  # one scale for both panels
    if curves:
        sizes = [k["batch_size"] for k in curves]
        for i, (curve, colour) in enumerate(zip(curves, _batch_colours(sizes))):
            name = f"B = {curve['batch_size']} (trial {curve['number']})"
            fig.add_trace(go.Scatter(x=curve["epoch"], y=curve["grad_noise_scale"], mode="lines+markers", name=name,
                                     showlegend=False, line={"color": colour},
                                     marker=_b_markers(curve["batch_size"], len(curve["epoch"]), scale, i == 0)),
                          row=1, col=1)
        # A trace, not add_hline: a shape's annotation on a log axis would take y as log10(y).
        epochs = [e for k in curves for e in k["epoch"]]
        fig.add_trace(go.Scatter(x=[min(epochs), max(epochs)], y=[value] * 2, legendgroup="crit", **crit),
                      row=1, col=1)
        fig.update_xaxes(title_text="epoch", dtick=_epoch_tick(epochs), row=1, col=1)
    col = 2 if curves else 1
    bound = f.get("lower_bound") or [False] * len(f["number"])
    se = f.get("grad_noise_scale_se") or [None] * len(f["number"])
    has_se = any(e for e in se)  # every SE 0 (the probe is the whole set) or unknown: no "± 1 SE"
    for is_bound, name, marker in (
            (False, f"final value{' ± 1 SE' * has_se}, per trial (colour: B)",
             {"size": 10, "line": {"width": 1, "color": "#333"}}),
            (True, "final lower bound (|G|² not resolved), per trial",
             {"size": 12, "color": "#ff7f0e", "symbol": "triangle-up-open", "line": {"width": 2}})):
        idx = [i for i, b in enumerate(bound) if b == is_bound]
        if idx and not is_bound:
            marker = {**_b_markers(1, 1, scale, not curves), **marker, "color": [
                float(np.log2(f["batch_size"][i])) for i in idx]}
        if idx:
            fig.add_trace(go.Scatter(x=[f["batch_size"][i] for i in idx], y=[f["grad_noise_scale"][i] for i in idx],
                                     mode="markers", name=name, text=[f"trial {f['number'][i]}" for i in idx],
                                     error_y=None if is_bound or not has_se else _error_y([se[i] for i in idx]),
                                     marker=marker),
                          row=1, col=col)
    span = [min(f["grad_noise_scale"]), max(f["grad_noise_scale"])]
    fig.add_trace(go.Scatter(x=[value] * 2, y=span, legendgroup="crit", showlegend=not curves, **crit),
                  row=1, col=col)
    fig.update_xaxes(row=1, col=col, **LOG_B)
    fig.update_yaxes(type="log", title_text="noise scale B_simple (examples, log scale)")
    fig.update_layout(height=540)
    return fig


def fig_steps(st: dict):
    import plotly.graph_objects as go

    fig = _figure(title={"text": f"Updates to reach val_acc {st['target_val_acc']}"})
    se = st.get("updates_to_target_se")
    fig.add_trace(go.Scatter(x=st["batch_size"], y=st["updates_to_target"], mode="markers",
                             name="trials ± 1 SE over replicates" if se else "trials",
                             error_y=_error_y(se) if se else None,
                             marker={"color": "#aaa", "size": 8}, text=[f"trial {n}" for n in st["number"]]))
    fig.add_trace(go.Scatter(x=st["best"]["batch_size"], y=st["best"]["updates_to_target"], mode="markers",
                             name="fewest per batch size", marker={"color": "#1f77b4", "size": 11}))
    if "fit" in st:
        f = st["fit"]
        fig.add_trace(go.Scatter(x=f["curve"]["batch_size"], y=f["curve"]["updates"], mode="lines",
                                 line={"color": "#d62728"},
                                 name=f"S_min (1 + B_crit/B): S_min {f['s_min']:.3g}, B_crit {f['b_crit']:.3g}"))
        span = [min(st["updates_to_target"]), max(st["updates_to_target"])]
        ci = f.get("b_crit_ci")
        if ci:
            hi = ci["ci_high"] if ci["ci_high"] is not None else max(st["batch_size"]) * 4
            fig.add_trace(go.Scatter(x=[ci["ci_low"], ci["ci_low"], hi, hi], y=[span[0], span[1], span[1], span[0]],
                                     mode="lines", fill="toself", fillcolor="rgba(214,39,40,0.12)",
                                     line={"width": 0}, hoverinfo="skip", name=f"B_crit {_interval_text(ci)}"))
        fig.add_trace(go.Scatter(x=[f["b_crit"]] * 2, y=span, mode="lines", line={"dash": "dot", "color": "#d62728"},
                                 name=f"B_crit = {f['b_crit']:.3g}"))
    fig.update_xaxes(**LOG_B)
    fig.update_yaxes(type="log", title_text="updates to target (log scale)")
    return fig


def _band(x: Sequence[float], low: Sequence[float], high: Sequence[float], colour: str, name: str, **where):
    """A filled band between two curves (an interval), drawn as one closed trace."""
    import plotly.graph_objects as go

    return go.Scatter(x=list(x) + list(x)[::-1], y=list(high) + list(low)[::-1], mode="lines", fill="toself",
                      fillcolor=colour, line={"width": 0}, hoverinfo="skip", name=name, **where)


def fig_mccandlish(mc: dict):
    """McCandlish's predictions from B_noise and eps_max against the sweep: the best lr per B beside
    eps_opt(B), the updates and examples to target beside S(B) and E(B) from B_noise and from the fit."""
    import plotly.graph_objects as go

    lr, st = mc.get("lr"), mc["steps"]
    titles = (["best effective lr against eps_opt(B)"] if lr else []) + ["updates to target", "examples to target"]
    fig = _subplots(titles)
    col = 1
    bn = f"B_noise {mc['b_noise']['value']:.3g}"
    if lr:
        best = lr["best"]
        if "predicted_ci_low" in lr:
            fig.add_trace(_band(lr["batch_size"], lr["predicted_ci_low"], lr["predicted_ci_high"],
                                "rgba(44,160,44,0.15)", "eps_opt, 95% bootstrap band"), row=1, col=1)
        fig.add_trace(go.Scatter(x=lr["batch_size"], y=lr["predicted"], mode="lines", line={"color": "#2ca02c"},
                                 name=f"eps_opt = eps_max/(1 + B_noise/B): eps_max {lr['eps_max']:.3g}, {bn}"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=best["batch_size"], y=best["best_effective_lr"], mode="markers",
                                 name="best effective lr lr/(1 - m) (fewest updates per B)",
                                 text=[f"trial {n}" for n in best["number"]],
                                 marker={"color": "#1f77b4", "size": 11}), row=1, col=1)
        fig.add_trace(go.Scatter(x=best["batch_size"], y=best["best_warmup_lr"], mode="markers",
                                 name="the same, mean over momentum's warm-up",
                                 marker={"color": "#1f77b4", "size": 10, "symbol": "circle-open",
                                         "line": {"width": 2}}), row=1, col=1)
        fig.update_yaxes(type="log", title_text="learning rate (log scale)", row=1, col=1)
        col = 2
    m = st["measured"]
    for k, (key, measured) in enumerate((("updates", "updates_to_target"), ("examples", "examples_to_target"))):
        c = col + k
        if f"predicted_{key}_ci_low" in st:
            fig.add_trace(_band(st["batch_size"], st[f"predicted_{key}_ci_low"], st[f"predicted_{key}_ci_high"],
                                "rgba(44,160,44,0.15)", "from B_noise, 95% bootstrap band", showlegend=k == 0,
                                legendgroup="band"), row=1, col=c)
        fig.add_trace(go.Scatter(x=st["batch_size"], y=st[f"predicted_{key}"], mode="lines", legendgroup="pred",
                                 line={"color": "#2ca02c"}, showlegend=k == 0,
                                 name=f"S_min (1 + B_noise/B), E = B·S: {bn}"), row=1, col=c)
        fig.add_trace(go.Scatter(x=st["batch_size"], y=st[f"fitted_{key}"], mode="lines", legendgroup="fit",
                                 line={"color": "#d62728", "dash": "dash"}, showlegend=k == 0,
                                 name=f"fit S_min (1 + B_crit/B): B_crit {mc['b_crit']['value']:.3g}"), row=1, col=c)
        fig.add_trace(go.Scatter(x=m["batch_size"], y=m[measured], mode="markers", legendgroup="measured",
                                 marker={"color": "#1f77b4", "size": 10}, showlegend=k == 0,
                                 name="fewest per batch size (measured)"), row=1, col=c)
        fig.update_yaxes(type="log", title_text=f"{key} to target (log scale)", row=1, col=c)
    fig.update_xaxes(**LOG_B)
    fig.update_layout(height=560)
    return fig


def fig_sharpness(sh: dict):
    """Final sharpness against B; for full-batch trials, against 2/lr with the edge of stability y = 2/lr."""
    import plotly.graph_objects as go

    fb = sh.get("full_batch")
    titles = ["final sharpness by batch size (colour: lr)"]
    if fb:
        titles.append("full batch: sharpness against the edge 2(1 + m)/lr")
    paths = (fb or {}).get("paths") or []
    if paths:
        titles.append("full batch: sharpness against updates, limit 2(1+m)/lr")
    fig = _subplots(titles)
    fig.add_trace(go.Scatter(x=sh["batch_size"], y=sh["final_sharpness"], mode="markers", name="trials",
                             text=[f"trial {n}, lr {lr:.3g}" + ("" if k is None else f", lr·λ_max {k:.3g}")
                                   for n, lr, k in zip(sh["number"], sh["lr"], sh["final_lr_sharpness"])],
                             marker=_lr_marker(sh["lr"], "circle", True)), row=1, col=1)
    fig.update_xaxes(row=1, col=1, **LOG_B)
    fig.update_yaxes(type="log", title_text="sharpness λ_max (top Hessian eigenvalue, log scale)", row=1, col=1)
    if fb:
        edge_x = fb.get("edge", fb["two_over_lr"])  # older reports: 2/lr
        seen = edge_x + fb["final_sharpness"]
        edge = [min(seen) / 1.2, max(seen) * 1.2]  # the line spans the points on both axes
        fig.add_trace(go.Scatter(x=edge_x, y=fb["final_sharpness"], mode="markers",
                                 name="full-batch trials", text=[f"trial {n}" for n in fb["number"]],
                                 marker={"size": 11, "color": "#2ca02c"}), row=1, col=2)
        fig.add_trace(go.Scatter(x=edge, y=edge, mode="lines", line={"dash": "dash", "color": "#333"},
                                 name="edge of stability λ_max = 2(1 + m)/lr"), row=1, col=2)
        fig.update_xaxes(type="log", title_text="2(1 + m) / lr (log scale)", row=1, col=2)
        fig.update_yaxes(type="log", title_text="sharpness λ_max (log scale)", row=1, col=2)
    for path in paths:
        fig.add_trace(go.Scatter(x=path["updates"], y=path["sharpness"], mode="lines+markers",
                                 name=f"trial {path['number']}: sharpness (lr {path['lr']:.3g})"), row=1, col=3)
        ends = [min(path["updates"]), max(path["updates"])]
        fig.add_trace(go.Scatter(x=ends, y=[path["limit"]] * 2, mode="lines", line={"dash": "dash", "color": "#333"},
                                 name=f"trial {path['number']}: 2(1+m)/lr = {path['limit']:.3g}"), row=1, col=3)
    if paths:
        fig.update_xaxes(title_text="updates", row=1, col=3)
        fig.update_yaxes(title_text="sharpness λ_max", row=1, col=3)
    return fig


def fig_compute(c: dict):
    import plotly.graph_objects as go

    fig = _subplots([f"{c['time_metric']} (training steps only)", "throughput"], showlegend=False)
    text = [f"trial {n}" for n in c["number"]]
    fig.add_trace(go.Scatter(x=c["batch_size"], y=c["time_s"], mode="markers", text=text, marker={"size": 10}),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=c["batch_size"], y=c["throughput_eps"], mode="markers", text=text,
                             marker={"size": 10, "color": "#2ca02c"}), row=1, col=2)
    fig.update_xaxes(**LOG_B)
    fig.update_yaxes(type="log", title_text="compute time (s, log scale)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="throughput (examples/s, log scale)", row=1, col=2)
    return fig


def fig_profile(p: dict):
    """The device profile: milliseconds per update (±IQR/2) and examples/s against B, log-log, the
    flat range shaded and the largest B that fits marked."""
    import plotly.graph_objects as go

    fig = _subplots(["time per update (median of the timed updates)", "throughput"], showlegend=True)
    b, ms = p["batch_size"], [s * 1e3 for s in p["seconds_per_update"]]
    text = [f"B {x}<br>{t:.3g} ms/update<br>{e:.3g} examples/s" for x, t, e in zip(b, ms, p["examples_per_second"])]
    fig.add_trace(go.Scatter(x=b, y=ms, mode="lines+markers", name="ms per update (bars: ± half the IQR)", text=text,
                             error_y=_error_y([q * 1e3 / 2 for q in p["seconds_per_update_iqr"]]),
                             marker={"size": 8}), row=1, col=1)
    fig.add_trace(go.Scatter(x=b, y=p["examples_per_second"], mode="lines+markers", name="examples per second",
                             text=text, marker={"size": 8, "color": "#2ca02c"}), row=1, col=2)
    for col in (1, 2):
        if p["flat_up_to"] > b[0]:
            fig.add_vrect(x0=b[0], x1=p["flat_up_to"], fillcolor="#1f77b4", opacity=0.12, line_width=0, row=1, col=col)
        fig.add_vline(x=p["largest_batch_size"], line={"dash": "dash", "color": "#d62728"}, row=1, col=col)
    if p["flat_up_to"] > b[0]:  # legend entries for the shapes, which have none of their own
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"shaded: almost free, B ≤ {p['flat_up_to']}",
                                 marker={"symbol": "square", "size": 12, "color": "rgba(31,119,180,0.3)"}))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"largest B that fits: {p['largest_batch_size']}",
                             line={"dash": "dash", "color": "#d62728"}))
    fig.update_xaxes(**LOG_B)
    fig.update_yaxes(type="log", title_text="ms per update (log scale)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="examples/s (log scale)", row=1, col=2)
    return fig


def fig_pareto(c: dict, p: dict):
    import plotly.graph_objects as go

    fig = _figure(title={"text": f"Pareto front: val_acc against {c['time_metric']}"})
    fig.add_trace(go.Scatter(x=c["time_s"], y=c["final_val_acc"], mode="markers", name="complete trials",
                             text=[f"trial {n}, B {b}" for n, b in zip(c["number"], c["batch_size"])],
                             marker={"color": "#aaa", "size": 9}))
    fig.add_trace(go.Scatter(x=p["time_s"], y=p["final_val_acc"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "#d62728"}, text=[f"trial {n}" for n in p["number"]],
                             marker={"size": 11}))
    fig.update_xaxes(type="log", title_text="compute time (s, log scale)")
    fig.update_yaxes(title_text="val_acc (fraction correct)")
    return fig


def fig_history(h: dict):
    import plotly.graph_objects as go

    fig = _figure(title={"text": f"Optimization history ({h['direction']} {h['objective']})"})
    fig.add_trace(go.Scatter(x=h["number"], y=h["value"], mode="markers", name=h["objective"], marker={"size": 9}))
    fig.add_trace(go.Scatter(x=h["number"], y=h["best_so_far"], mode="lines", line={"shape": "hv"},
                             name="best so far"))
    fig.update_xaxes(title_text="trial number", dtick=max(1, math.ceil(len(h["number"]) / 15)))  # whole numbers
    fig.update_yaxes(title_text=f"{h['objective']} (fraction correct)" if h["objective"] == "val_acc"
                     else h["objective"])
    return fig


def fig_importance(imp: dict):
    import plotly.graph_objects as go

    ranked = sorted(imp["importance"].items(), key=lambda kv: kv[1])
    ped = imp.get("ped_anova")
    title = f"Parameter importances: {imp['method']}" + (f" and {imp['dashboard_method']}" if ped else "")
    fig = _figure(title={"text": title}, height=200 + (90 if ped else 50) * len(ranked), barmode="group",
                  showlegend=bool(ped))
    fig.add_trace(go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h", name=imp["method"],
                         text=[f"{v:.2f}" for _, v in ranked], textposition="auto"))
    if ped:
        fig.add_trace(go.Bar(x=[ped.get(k, 0.0) for k, _ in ranked], y=[k for k, _ in ranked], orientation="h",
                             name=f"{imp['dashboard_method']} (as optuna-dashboard shows)",
                             text=[f"{ped.get(k, 0.0):.2f}" for k, _ in ranked], textposition="auto"))
    fig.update_xaxes(title_text="importance (each method's values sum to 1)", range=[0, 1])
    fig.update_yaxes(title_text="parameter")
    return fig


def _plot(fig, div_id: str) -> str:
    # A fixed div id keeps the page a pure function of report.json (plotly picks a random one).
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def _table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """An HTML table; columns are (key, heading, format spec)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k), f))}</td>" for k, _, f in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


NAV = (("answer", "answer"), ("summary", "summary"), ("accuracy", "accuracy"), ("octaves", "octaves"),
       ("curves", "curves"), ("loss-noise", "loss noise"),
       ("grad-noise", "noise scale"), ("steps", "steps"), ("mccandlish", "B_noise"), ("sharpness", "sharpness"),
       ("compute", "compute"), ("profile", "device"), ("pareto", "Pareto"),
       ("history", "history"), ("importance", "importance"), ("top", "top trials"), ("repro", "reproducibility"))


def render_html(report: dict) -> str:
    """The page, drawn from the report dict alone."""
    from plotly.offline import get_plotlyjs

    timings = report["volatile"]["timings"]
    compute = timings.get("compute")
    profile = report["volatile"].get("profile")
    parts: list[str] = []

    def section(anchor: str, title: str, key: str | None, draw) -> None:
        """A section drawn by draw(), or a one-line note why not when report[key] is absent."""
        if key is None or key in report:
            body = draw()
        else:
            body = f'<p class="skip">Not shown: {html.escape(report["skipped"].get(key, "no data"))}.</p>'
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')

    def plot(fig_of, key: str, div_id: str):
        return lambda: _plot(fig_of(report[key]), div_id) + _notes(notes(report, key))

    no_time = '<p class="skip">Not shown: no complete trial with a compute time.</p>'
    section("answer", "Which batch size, and why", "recommendation", lambda: _recommendation_html(report))
    section("summary", "Summary", None, lambda: _summary_html(report["summary"], timings.get("summary", [])))
    section("accuracy", "Accuracy and generalization gap against batch size", "accuracy",
            lambda: _plot(fig_accuracy(report["accuracy"], report.get("per_octave")), "plot-accuracy")
            + _notes(notes(report, "accuracy")))
    section("octaves", "Per octave of batch size", "per_octave", lambda: _octave_table(report["per_octave"]))
    section("curves", "Learning curves across the batch-size range", "learning_curves",
            plot(fig_learning_curves, "learning_curves", "plot-curves"))
    section("loss-noise", "Loss noise against batch size", "loss_noise",
            plot(fig_loss_noise, "loss_noise", "plot-loss-noise"))
    section("grad-noise", "Gradient noise scale and the critical batch size", "grad_noise",
            plot(fig_grad_noise, "grad_noise", "plot-grad-noise"))
    section("steps", "Updates to target against batch size", "steps_to_target",
            plot(fig_steps, "steps_to_target", "plot-steps"))
    section("mccandlish", "McCandlish's model beside the sweep: B_noise, the best lr, S(B) and E(B)", "mccandlish",
            plot(fig_mccandlish, "mccandlish", "plot-mccandlish"))
    section("sharpness", "Sharpness against batch size and the edge of stability", "sharpness",
            plot(fig_sharpness, "sharpness", "plot-sharpness"))
    section("compute", "Compute time and throughput against batch size", None,
            lambda: _plot(fig_compute(compute), "plot-compute") if compute else no_time)
    section("profile", "This device: time per update against batch size", None, lambda: _profile_html(profile))
    section("pareto", "Pareto front of val_acc against compute time", None,
            lambda: _plot(fig_pareto(compute, timings["pareto"]), "plot-pareto") if compute else no_time)
    section("history", "Optimization history", "history", plot(fig_history, "history", "plot-history"))
    section("importance", "Parameter importances", "importance", plot(fig_importance, "importance", "plot-importance"))
    section("top", "Top trials", "top_trials", lambda: _top_table(report))
    section("repro", "Reproducibility", None, lambda: _reproducibility_html(report))
    title = html.escape(f"sgdtune report: {report['study']['name']}")
    page = resources.files("sgdtune").joinpath(TEMPLATE).read_text()
    return (page.replace("<!--TITLE-->", title)
                .replace("<!--NAV-->", "".join(f'<a href="#{a}">{t}</a>' for a, t in NAV))
                .replace("<!--GENERATED-->", html.escape(f"generated {report['volatile']['dates']['generated']}"))
                .replace("<!--BODY-->", "\n".join(parts))
                .replace("/*PLOTLYJS*/", get_plotlyjs()))  # last: markers inside plotly.js stay untouched


def notes(report: dict, key: str) -> list[str]:
    """The uncertainty behind a section's plot, in words: how its error bars and intervals are made."""
    r = report[key]
    if key == "accuracy":
        out = [f"Error bars: ±1 standard error of val_acc, {r['se_rule']}."]
        return out + ([f"{r['se_missing']}."] if "se_missing" in r else [])
    if key == "loss_noise":
        out = ["Every trial with a loss noise enters, at any B < n_train (successive differences within an epoch "
               "follow σ/√B at every B < N: no N/8 cut)."]
        ex = r["excluded"]
        if ex["number"]:
            out.append(f"Left out, {ex['reason']}: trials " + ", ".join(
                f"{n} (B = {b}{', full batch' * f})" for n, b, f in zip(ex["number"], ex["batch_size"],
                                                                      ex["full_batch"])) + ".")
        if "slope_ci" in r:
            ci = r["slope_ci"]
            out.append(f"Slope {r['slope']:+.3f}, {_interval_text(ci, '+.3f')} ({ci['method']}, {ci['resamples']} "
                       f"resamples of the trials, seed {ci['seed']})"
                       + (": the interval includes 0, no trend, so no fitted line is drawn." if not r.get("trend", True)
                          else "."))
        return out
    if key == "importance":
        out = [f"{r['method']}: {r['method_description']}."] if "method_description" in r else []
        if "dashboard_method" in r:
            out.append(f"optuna-dashboard shows {r['dashboard_method']}: {r['dashboard_method_description']}; the "
                       "two answer different "
                       "questions (variance over the whole space against what sets the best trials apart), so their "
                       "rankings can differ." + ("" if "ped_anova" in r else
                                                 f" Not computed here: {r.get('ped_anova_skipped', '')}."))
        return out
    if key == "steps_to_target" and "fit" in r:
        f = r["fit"]
        if "b_crit_ci" not in f:
            return [f"No interval: {f.get('ci_skipped', 'bootstrap failed')}."]
        ci = f["b_crit_ci"]
        return [f"B_crit {f['b_crit']:.4g} ({_interval_text(ci, '.4g')}), S_min {f['s_min']:.4g} "
                f"({_interval_text(f['s_min_ci'], '.4g')}): {ci['method']} over {ci['resamples']} resamples of the "
                f"trials (seed {ci['seed']}), each refitted to the fewest updates per batch size; "
                f"{ci['resamples_failed']} resamples with a single batch size left out."]
    if key == "grad_noise":
        out = [f"Median over {r['median_over']}: {r['median_final']:.4g} examples."]
        se = [e for e in r["final"]["grad_noise_scale_se"] if e is not None]
        if se and not any(se):
            out.append("Every standard error is 0, as for a probe of the whole training set: no sampling error, "
                       "the value is exact for the final weights.")
        if r["n_bounds"]:
            out.append(f"{r['n_bounds']} trial{'s' * (r['n_bounds'] > 1)} gave only a lower bound (open triangles): "
                       "|G|² was within 2 SE of 0.")
        return out
    if key == "mccandlish":
        from .mccandlish import mccandlish_notes

        return mccandlish_notes(r)
    if key == "sharpness":
        out = ["Edge of stability: full-batch gradient descent with heavy-ball momentum m on a quadratic is stable "
               "while lr·λ_max < 2(1 + m): 3.8 at m = 0.9, 2 without momentum."]
        out += [f"{r[k]}." for k in ("adam", "weight_decay_note") if k in r]
        return out + ([f"{r['full_batch_skipped']}."] if "full_batch_skipped" in r else [])
    return []


def _profile_html(profile: dict | None) -> str:
    """The device profile's plot and sentences, or why not."""
    if not profile:
        return '<p class="skip">Not shown: the study ran without a device profile (profile = false).</p>'
    missing = [k for k in PROFILE_KEYS if k not in profile]
    if missing:
        return f'<p class="skip">Not shown: the recorded device profile lacks {html.escape(", ".join(missing))}.</p>'
    return _plot(fig_profile(profile), "plot-profile") + _notes(profile_notes(profile))


def profile_notes(profile: dict) -> list[str]:
    """The profile's sentences (sgdtune/profile/measure.py), with how it was measured and on what."""
    threads = profile["threads"]
    return sentences(profile) + [
        f"One update of {profile['model']} ({profile['dtype']}, threads {threads}) as the trainer makes it: the "
        f"median over timed updates after a warm-up; bars: half the interquartile range. Flat range: "
        f"{profile['flat_rule']}. Timed within a budget of {profile['budget_s']:g} s"
        + (", read from the cache of an earlier run." if profile["cached"] else ".")]


def _octave_table(po: dict) -> str:
    """Trials and the best val_acc per octave of B, then the trend over octaves in words."""
    keys = ("label", "n_trials", "n_complete", "n_pruned", "n_fail", "best_val_acc", "best_val_acc_se",
            "best_batch_size", "best_lr", "best_number", "median_val_acc")
    rows = [dict(zip(keys, values)) for values in zip(*(po[k] for k in keys))]
    table = _table(rows, [
        ("label", "B (octave)", ""), ("n_trials", "trials", ""), ("n_complete", "complete", ""),
        ("n_pruned", "pruned", ""), ("n_fail", "failed", ""), ("median_val_acc", "median val_acc", ".4f"),
        ("best_val_acc", "best val_acc", ".4f"), ("best_val_acc_se", "± SE", ".4f"), ("best_batch_size", "at B", ""),
        ("best_lr", "lr", ".3g"), ("best_number", "trial", "")])
    return table + _notes([octave_trend_sentence(po["fit"]), f"Rule: {po['fit']['rule']}."])


def _recommendation_html(report: dict) -> str:
    """The recommendation in a sentence and its reasons, then time to accuracy per batch size."""
    rec = report["recommendation"]
    out = [f'<p class="answer"><strong>{html.escape(rec["sentence"])}</strong></p>',
           "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in rec["reasons"]) + "</ul>",
           _notes([f"Goal: {rec['goal']} (others: {', '.join(g for g in rec['goals'] if g != rec['goal'])}; "
                   f"`--goal` of the study and report commands). Within noise: {rec['test']}."])]
    tta = report.get("time_to_accuracy")
    if tta:
        pb = tta["per_batch"]
        rows = [{"label": pb["label"][i], "n_complete": pb["n_complete"][i], "n_reached": pb["n_reached"][i],
                 "number": pb["number"][i], "batch_size": pb["batch_size"][i], "updates": pb["updates"][i],
                 "examples": pb["examples"][i], "seconds": pb["seconds"][i],
                 "measured_seconds": pb["measured_seconds"][i], "time_source": pb["time_source"][i],
                 "within": "yes" if pb["label"][i] in rec["within_noise"] else "no"} for i in range(len(pb["label"]))]
        out.append(f"<h3>Time to accuracy: to reach {html.escape(tta['goal']['text'])}, per "
                   f"{html.escape(tta['grouped_by'])}</h3>")
        out.append(_table(rows, [
            ("label", "B", ""), ("within", "best val_acc within noise", ""), ("n_complete", "complete", ""),
            ("n_reached", "reached", ""), ("number", "fastest trial", ""), ("batch_size", "its B", ""),
            ("updates", "updates", ",.0f"), ("examples", "examples", ",.0f"), ("seconds", "seconds", ".3g"),
            ("measured_seconds", "measured s", ".3g"), ("time_source", "seconds from", "")]))
        notes = [f"{tta['time_rule']}.", "measured s: the trial's own compute_time_s, pro rata of its updates."]
        if tta["goal"].get("rule"):
            notes.append(f"Reached: {tta['goal']['rule']}.")
        out.append(_notes(notes))
    return "".join(out)


def _notes(lines: list[str]) -> str:
    return "".join(f'<p class="note">{html.escape(t)}</p>' for t in lines)


def _summary_html(sentences: list[str], timing_sentences: list[str]) -> str:
    items = [f"<li>{html.escape(s)}</li>" for s in sentences]
    items += [f'<li class="timing">{html.escape(s)} <em>(timing: varies between runs)</em></li>'
              for s in timing_sentences]
    return "<ul>" + "".join(items) + "</ul>"


def _top_table(report: dict) -> str:
    """The top trials, with their compute time and MLflow run id from "volatile"."""
    v = report["volatile"]
    metric = v["timings"].get("compute", {}).get("time_metric", "compute_time_s")
    run_ids = v.get("mlflow", {}).get("run_ids", {})
    rows = [{**r, "budget": f"{r['budget']}={r['budget_size']}", "run_id": run_ids.get(str(r["number"])),
             "time": v["timings"]["trials"].get(str(r["number"]), {}).get(metric)} for r in report["top_trials"]]
    return _table(rows, [
        ("number", "trial", ""), ("batch_size", "B", ""), ("lr", "lr", ".3g"), ("budget", "budget", ""),
        ("final_val_acc", "val_acc", ".4f"), ("final_val_acc_se", "± SE", ".4f"),
        ("final_test_acc", "test_acc (held out)", ".4f"), ("final_train_acc", "train_acc", ".4f"),
        ("final_gen_gap", "gen_gap", "+.4f"), ("final_loss_noise", "loss noise", ".3g"),
        ("final_grad_noise_scale", "noise scale", ".3g"), ("updates", "updates", ".0f"),
        ("updates_to_target", "to target", ".0f"), ("time", f"{metric}".replace("_", " "), ".3g"),
        ("run_id", "MLflow run id", ""),
    ])


def numeric_key(item: tuple[str, object]) -> tuple[int, float | str]:
    """Sort key of a (key, value) pair whose key is a number as text ("10" after "9"); others after, as text."""
    try:
        return 0, float(item[0])
    except ValueError:
        return 1, item[0]


def _reproducibility_html(report: dict) -> str:
    r = report["reproducibility"]
    mlflow = report["volatile"].get("mlflow", {})
    f = r.get("experiment_file", {})
    sha = f and f"{f['sha256']} ({'matches' if f['sha256_matches'] else 'DIFFERS FROM'} the recorded hash)"
    items = [
        ("study command", r.get("study_command")), ("report command", r["report_command"]),
        ("experiment file", f.get("name")), ("sha256", sha), ("study seed", r.get("study_seed")),
        ("trial seeds", ", ".join(f"{k}: {s}" for k, s in sorted(r["trial_seeds"].items(), key=numeric_key))),
        ("trials by state", ", ".join(f"{k.lower()} {n}" for k, n in r["trials_by_state"].items())),
        ("device", r.get("device")), ("git commit", r.get("git_commit") or "(not a git checkout)"),
        ("package versions", ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())),
        ("MLflow store", mlflow.get("tracking_uri")), ("MLflow parent run", mlflow.get("parent_run_id")),
        ("MLflow UI (runs table)", mlflow.get("ui_url") and f"{mlflow['ui_url']}  (start it: python -m sgdtune.ui)"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items if v not in (None, ""))
    content = f"<pre>{html.escape(f['content'])}</pre>" if f.get("content") else ""
    return f'<table class="kv">{rows}</table>{content}'
