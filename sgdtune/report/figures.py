"""The report's figures, one function per plot: each takes its report.json section and
returns a plotly figure (html.py puts them on the page). Every number drawn comes from that
section.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .figure_parts import (
    LOG_B,
    b_markers,
    b_scale,
    batch_colours,
    epoch_tick,
    error_y,
    figure,
    interval_text,
    lr_marker,
    subplots,
)


def fig_accuracy(a: dict, po: dict | None = None):
    """val_acc, train_acc and the gap against B; the best per octave (`po`: report["per_octave"]),
    and its fitted trend over the octaves only where the fit found one."""
    import plotly.graph_objects as go

    fig = subplots(["val_acc and train_acc (colour: lr)", "generalization gap = train_acc - val_acc"])
    hover = [f"trial {n}<br>B {b}<br>lr {lr:.3g}<br>{bu} {s}" for n, b, lr, bu, s in
             zip(a["number"], a["batch_size"], a["lr"], a["budget"], a["budget_size"])]
    for key, name, symbol, bar, se in (("final_val_acc", "val_acc ± 1 SE", "circle", True, a["final_val_acc_se"]),
                                       ("final_train_acc", "train_acc", "diamond-open", False, [])):
        fig.add_trace(go.Scatter(x=a["batch_size"], y=a[key], mode="markers", name=name, text=hover,
                                 hovertemplate="%{text}<br>" + name + " %{y:.4f}<extra></extra>",
                                 error_y=error_y(se, a[key], 1.0) if se else None,
                                 marker=lr_marker(a["lr"], symbol, bar)), row=1, col=1)
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
                             error_y=error_y(best["final_val_acc_se"], best["final_val_acc"], 1.0),
                             hovertemplate="%{text}<br>best val_acc %{y:.4f}<extra></extra>"), row=1, col=1)
    fit = (po or {}).get("fit", {})
    if fit.get("trend"):
        ci = interval_text(fit["ci"], "+.4f")  # the line over every complete trial (sections.octave_trend)
        fig.add_trace(go.Scatter(x=fit["line"]["batch_size"], y=fit["line"]["val_acc"], mode="lines",
                                 line={"color": "#111", "dash": "dash"},
                                 name=f"trend {fit['gain_per_doubling']:+.4f} per doubling ({ci})"), row=1, col=1)
    fig.add_trace(go.Scatter(x=a["batch_size"], y=a["final_gen_gap"], mode="markers", name="gen_gap", text=hover,
                             hovertemplate="%{text}<br>gap %{y:+.4f}<extra></extra>",
                             marker=lr_marker(a["lr"], "square", False)), row=1, col=2)
    fig.update_xaxes(**LOG_B)
    fig.update_yaxes(title_text="accuracy (fraction correct)", row=1, col=1)
    fig.update_yaxes(title_text="train_acc - val_acc (fraction)", zerolinecolor="#999", row=1, col=2)
    return fig


def fig_learning_curves(lc: dict):
    import plotly.graph_objects as go

    fig = subplots(["val_acc by epoch (colour: B)", "val_acc by update (colour: B)"], showlegend=False)
    sizes = [c["batch_size"] for c in lc["trials"]]
    scale = b_scale(sizes)
    for i, (c, colour) in enumerate(zip(lc["trials"], batch_colours(sizes))):
        name = f"B = {c['batch_size']} (trial {c['number']}, lr {c['lr']:.3g})"
        for col, x in ((1, c["epoch"]), (2, c["updates"])):
            fig.add_trace(go.Scatter(x=x, y=c["val_acc"], mode="lines+markers", name=name, line={"color": colour},
                                     marker=b_markers(c["batch_size"], len(x), scale, i == 0 and col == 1)),
                          row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=epoch_tick([e for c in lc["trials"] for e in c["epoch"]]), row=1, col=1)
    fig.update_xaxes(title_text="updates (log scale)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="val_acc (fraction correct)")
    return fig


def fig_loss_noise(ln: dict):
    import plotly.graph_objects as go

    fitted = "slope" in ln and ln.get("trend", True)
    ci = interval_text(ln.get("slope_ci"), "+.2f")
    if fitted:
        title = (f"Loss noise against batch size: fitted slope {ln['slope']:+.2f}"
                 f"{f' ({ci})' if ci else ''}, theory {ln['theory_slope']}")
    elif "slope" in ln:
        title = (f"Loss noise against batch size: no trend (slope {ln['slope']:+.2f}"
                 f"{f', {ci} includes 0' if ci else ''}; no line drawn)")
    else:
        title = f"Loss noise against batch size (no fit: {ln['fit_skipped']})"
    fig = figure(title={"text": title, "font": {"size": 14}})
    fig.add_trace(go.Scatter(x=ln["batch_size"], y=ln["loss_noise"], mode="markers", name="trials (colour: lr)",
                             text=[f"trial {n}" for n in ln["number"]], marker=lr_marker(ln["lr"], "circle", True)))
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
    fig = subplots(titles if curves else titles[1:])
    f = gn["final"]
    scale = b_scale([k["batch_size"] for k in curves] + list(f["batch_size"]))  # one scale for both panels
    if curves:
        sizes = [k["batch_size"] for k in curves]
        for i, (curve, colour) in enumerate(zip(curves, batch_colours(sizes))):
            name = f"B = {curve['batch_size']} (trial {curve['number']})"
            fig.add_trace(go.Scatter(x=curve["epoch"], y=curve["grad_noise_scale"], mode="lines+markers", name=name,
                                     showlegend=False, line={"color": colour},
                                     marker=b_markers(curve["batch_size"], len(curve["epoch"]), scale, i == 0)),
                          row=1, col=1)
        # A trace, not add_hline: a shape's annotation on a log axis would take y as log10(y).
        epochs = [e for k in curves for e in k["epoch"]]
        fig.add_trace(go.Scatter(x=[min(epochs), max(epochs)], y=[value] * 2, legendgroup="crit", **crit),
                      row=1, col=1)
        fig.update_xaxes(title_text="epoch", dtick=epoch_tick(epochs), row=1, col=1)
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
            marker = {**b_markers(1, 1, scale, not curves), **marker, "color": [
                float(np.log2(f["batch_size"][i])) for i in idx]}
        if idx:
            fig.add_trace(go.Scatter(x=[f["batch_size"][i] for i in idx], y=[f["grad_noise_scale"][i] for i in idx],
                                     mode="markers", name=name, text=[f"trial {f['number'][i]}" for i in idx],
                                     error_y=None if is_bound or not has_se else error_y([se[i] for i in idx]),
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

    fig = figure(title={"text": f"Updates to reach val_acc {st['target_val_acc']}"})
    se = st.get("updates_to_target_se")
    fig.add_trace(go.Scatter(x=st["batch_size"], y=st["updates_to_target"], mode="markers",
                             name="trials ± 1 SE over replicates" if se else "trials",
                             error_y=error_y(se) if se else None,
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
                                     line={"width": 0}, hoverinfo="skip", name=f"B_crit {interval_text(ci)}"))
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
    fig = subplots(titles)
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
    fig = subplots(titles)
    fig.add_trace(go.Scatter(x=sh["batch_size"], y=sh["final_sharpness"], mode="markers", name="trials",
                             text=[f"trial {n}, lr {lr:.3g}" + ("" if k is None else f", lr·λ_max {k:.3g}")
                                   for n, lr, k in zip(sh["number"], sh["lr"], sh["final_lr_sharpness"])],
                             marker=lr_marker(sh["lr"], "circle", True)), row=1, col=1)
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

    fig = subplots([f"{c['time_metric']} (training steps only)", "throughput"], showlegend=False)
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

    fig = subplots(["time per update (median of the timed updates)", "throughput"], showlegend=True)
    b, ms = p["batch_size"], [s * 1e3 for s in p["seconds_per_update"]]
    text = [f"B {x}<br>{t:.3g} ms/update<br>{e:.3g} examples/s" for x, t, e in zip(b, ms, p["examples_per_second"])]
    fig.add_trace(go.Scatter(x=b, y=ms, mode="lines+markers", name="ms per update (bars: ± half the IQR)", text=text,
                             error_y=error_y([q * 1e3 / 2 for q in p["seconds_per_update_iqr"]]),
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

    fig = figure(title={"text": f"Pareto front: val_acc against {c['time_metric']}"})
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

    fig = figure(title={"text": f"Optimization history ({h['direction']} {h['objective']})"})
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
    fig = figure(title={"text": title}, height=200 + (90 if ped else 50) * len(ranked), barmode="group",
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

