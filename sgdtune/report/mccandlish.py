"""McCandlish's model beside the sweep: the learning rate and the updates to target that B_noise
and eps_max predict, against what the sweep found (report.json key "mccandlish").

The trials it stands on are those the S(B) fit stands on: at each batch size the one with the
fewest updates to the target (report.noise_sections.steps_section), among those that measured B_noise
there (train.b_noise_samples > 0). Its B_noise and eps_max are the medians over these trials of
each trial's value at the compared point (COMPARED_POINT: docs/science.md, section 5), with a
percentile bootstrap interval over the trials.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..science.fits import bootstrap_intervals, steps_model
from ..science.mccandlish import effective_lr, momentum_warmup, optimal_lr, predicted_examples, predicted_updates
from .inputs import column

# Which B_noise is set against B_crit: the mean of the trial's B_noise along its path to the target
# (every measurement at an update count <= updates_to_target; at the target alone where it measured
# no earlier point). Why, with the runs that show it: docs/science.md, section 5.
COMPARED_POINT = "path_mean"
POINTS = {"path_mean": "the mean of B_noise over the measurements along each trial's path to the target (the "
                       "target included; the target alone where a trial measured no earlier point)",
          "at_target": "B_noise where each trial first reached the target"}
WARMUP = ("momentum's warm-up: heavy-ball SGD steps lr (1 - m^t)/(1 - m) at update t under a constant gradient, so "
          "over the S updates to the target its mean step is lr/(1 - m) times 1 - m(1 - m^S)/(S(1 - m)) (0.41 at "
          "m = 0.9 and S = 10); `best_effective_lr` is lr/(1 - m), `best_warmup_lr` that mean")
N_CURVE = 40  # points of each predicted curve over the batch sizes tried


def best_trials(rows: list[dict]) -> list[dict]:
    """At each batch size the trial with the fewest updates to the target (ties: lower number), by
    ascending B: the trials the S(B) fit stands on."""
    best: dict[int, dict] = {}
    for r in sorted((r for r in rows if r["summary"].get("updates_to_target") is not None),
                    key=lambda r: (r["summary"]["updates_to_target"], r["number"])):
        best.setdefault(r["batch_size"], r)
    return [best[b] for b in sorted(best)]


def path_mean(row: dict, path: dict | None, key: str) -> tuple[float | None, int]:
    """The mean of `key` ("b_noise" or "eps_max") over the measurements at update counts up to the
    trial's updates_to_target, and their number; the value at the target alone without a path."""
    target = row["summary"]["updates_to_target"]
    values = [v for u, v in zip(path["updates"], path[key]) if u <= target and v is not None] if path else []
    if values:
        return float(np.mean(values)), len(values)
    at = row["summary"].get(f"{key}_at_target")
    return (at, 1) if at is not None else (None, 0)


def grid_neighbours(lrs: list[float], best: float) -> tuple[float | None, float | None]:
    """The lr values tried just below and above `best` at one batch size. At an end of the values
    tried, the missing neighbour is one step of the other side's ratio beyond `best` (a grid of
    factors of 3 ending at 0.1: 0.1/3 below); (None, None) when only `best` was tried."""
    below = [x for x in lrs if x < best]
    above = [x for x in lrs if x > best]
    lo, hi = (max(below) if below else None), (min(above) if above else None)
    if lo is None and hi is None:
        return None, None
    return (lo if lo is not None else best * best / hi), (hi if hi is not None else best * best / lo)


def mccandlish_section(rows: list[dict], steps: dict | None, paths: dict[int, dict] | None = None) -> dict | None:
    """B_noise with its interval beside B_crit with its interval; eps_opt(B) predicted from the
    trials' own B_noise and eps_max against the best effective lr per B; S(B) and E(B) predicted
    from B_noise against the S(B) fit. None without a fit or without B_noise on its trials.

    `rows`: every trial's row (report.inputs.trial_rows: the lrs tried at a B include those that
    diverged); `steps`: report.noise_sections.steps_section's; `paths`: per trial
    number {"updates": [...], "b_noise": [...], "eps_max": [...]} (the MLflow histories)."""
    if not steps or "fit" not in steps:
        return None
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["batch_size"]]
    trials = [r for r in best_trials(complete) if r["summary"].get("b_noise_at_target") is not None]
    if not trials:
        return None
    paths = paths or {}
    fit = steps["fit"]
    point = {"at_target": [r["summary"]["b_noise_at_target"] for r in trials]}
    point["path_mean"], n_path = map(list, zip(*(path_mean(r, paths.get(r["number"]), "b_noise") for r in trials)))
    eps = {"at_target": [r["summary"].get("eps_max_at_target") for r in trials],
           "path_mean": [path_mean(r, paths.get(r["number"]), "eps_max")[0] for r in trials]}
    b = np.array(point[COMPARED_POINT], float)
    e = np.array([np.nan if v is None else v for v in eps[COMPARED_POINT]], float)
    sizes = np.array(column(trials, "batch_size"), float)
    grid = np.geomspace(min(column(complete, "batch_size")), max(column(complete, "batch_size")), N_CURVE)
    s_min = fit["s_min"]

    def statistic(idx):  # medians over a resample of the trials, and the curves they predict
        bn, em = float(np.median(b[idx])), float(np.nanmedian(e[idx])) if np.isfinite(e[idx]).any() else np.nan
        return [bn, em, *optimal_lr(grid, em, bn), *predicted_updates(grid, s_min, bn)]

    b_noise, eps_max = float(np.median(b)), float(np.nanmedian(e)) if np.isfinite(e).any() else None
    ci = bootstrap_intervals(statistic, len(trials)) if len(trials) >= 2 else None
    out: dict[str, Any] = {
        "compared_point": COMPARED_POINT, "compared_point_meaning": POINTS[COMPARED_POINT],
        "trials": {"number": column(trials, "number"), "batch_size": sizes.astype(int).tolist(),
                   "lr": column(trials, "lr"), "momentum": column(trials, "momentum"),
                   "updates_to_target": column(trials, "updates_to_target"),
                   "b_noise_at_target": point["at_target"],
                   "b_noise_at_target_se": column(trials, "b_noise_at_target_se"),
                   "b_noise_path_mean": point["path_mean"], "path_points": n_path,
                   "eps_max_at_target": eps["at_target"], "eps_max_path_mean": eps["path_mean"]},
        "b_noise": {"value": b_noise, "statistic": "median over the trials", "n_trials": len(trials),
                    "at_target_median": float(np.median(point["at_target"])),
                    "path_mean_median": float(np.median(point["path_mean"]))},
        "eps_max": {"value": eps_max, "statistic": "median over the trials"},
        "b_crit": {"value": fit["b_crit"], "source": "S(B) fit to updates-to-target"},
    }
    if ci is not None:
        out["b_noise"].update(ci[0].as_dict())
        if eps_max is not None:
            out["eps_max"].update(ci[1].as_dict())
    if fit.get("b_crit_ci"):
        out["b_crit"].update(fit["b_crit_ci"])
    out["agreement"] = agreement(out["b_noise"], out["b_crit"])
    out["steps"] = steps_prediction(grid, s_min, b_noise, fit, steps, ci[2 + N_CURVE:] if ci else None)
    if eps_max is not None:
        out["lr"] = lr_prediction(grid, rows, trials, eps_max, b_noise, ci[2:2 + N_CURVE] if ci else None)
    return out


def agreement(b_noise: dict, b_crit: dict) -> dict:
    """Where B_noise sits against B_crit's interval, and whether the two intervals overlap.
    `verdict`: "inside" (B_noise within B_crit's interval), "overlap" (only the intervals meet),
    "apart" (they do not), or "no interval"."""
    out: dict[str, Any] = {"ratio": b_noise["value"] / b_crit["value"]}
    if "ci_low" not in b_crit or "ci_low" not in b_noise:
        return {**out, "verdict": "no interval"}
    high = np.inf if b_crit["ci_high"] is None else b_crit["ci_high"]
    bn_high = np.inf if b_noise["ci_high"] is None else b_noise["ci_high"]
    inside = b_crit["ci_low"] <= b_noise["value"] <= high
    overlap = b_noise["ci_low"] <= high and b_crit["ci_low"] <= bn_high
    return {**out, "verdict": "inside" if inside else "overlap" if overlap else "apart"}


def steps_prediction(grid: np.ndarray, s_min: float, b_noise: float, fit: dict, steps: dict,
                     band: list | None) -> dict:
    """S(B) and E(B) with B_noise in B_crit's place (S_min from the fit) against the fitted curves
    and the fewest updates measured per B; the band: S(B) over B_noise's bootstrap resamples."""
    best = steps["best"]
    measured = np.array(best["updates_to_target"], float)
    at = np.array(best["batch_size"], float)
    predicted_at = predicted_updates(at, s_min, b_noise)
    out = {"s_min": s_min, "batch_size": grid.tolist(),
           "predicted_updates": predicted_updates(grid, s_min, b_noise).tolist(),
           "fitted_updates": steps_model(grid, s_min, fit["b_crit"]).tolist(),
           "predicted_examples": predicted_examples(grid, s_min, b_noise).tolist(),
           "fitted_examples": (grid * steps_model(grid, s_min, fit["b_crit"])).tolist(),
           "measured": {"batch_size": at.astype(int).tolist(), "updates_to_target": measured.tolist(),
                        "examples_to_target": (at * measured).tolist(),
                        "predicted_updates": predicted_at.tolist(),
                        "measured_over_predicted": (measured / predicted_at).tolist()}}
    if band:
        out["predicted_updates_ci_low"] = [i.low for i in band]
        out["predicted_updates_ci_high"] = [i.high for i in band]
        out["predicted_examples_ci_low"] = (grid * np.array(out["predicted_updates_ci_low"])).tolist()
        out["predicted_examples_ci_high"] = (grid * np.array(out["predicted_updates_ci_high"])).tolist()
    return out


def lr_prediction(grid: np.ndarray, rows: list[dict], trials: list[dict], eps_max: float, b_noise: float,
                  band: list | None) -> dict:
    """eps_opt(B) = eps_max/(1 + B_noise/B) against the sweep's best effective lr per B (the trial
    with the fewest updates to target): lr/(1 - m) and its mean over the warm-up of momentum (WARMUP).
    `within_grid` holds where eps_opt lies between the effective lrs tried just below and above the
    best one at that B (grid_neighbours; the sweep cannot place the best lr more finely; None where one
    lr was tried); `best_at_grid_edge` where
    the best lr is the smallest or largest tried there (the range, not B, may limit it)."""
    sizes = np.array(column(trials, "batch_size"), float)
    m = [r.get("momentum") for r in trials]
    eff = [float(effective_lr(r["lr"], r.get("momentum"))) for r in trials]
    warm = [x * float(momentum_warmup(r.get("momentum"), r["summary"]["updates_to_target"]))
            for x, r in zip(eff, trials)]
    predicted = optimal_lr(sizes, eps_max, b_noise)
    within, edge = [], []
    for r, p in zip(trials, predicted):
        tried = sorted({x["lr"] for x in rows if x["batch_size"] == r["batch_size"] and x["lr"] is not None})
        lo, hi = grid_neighbours(tried, r["lr"])
        scale = float(effective_lr(1.0, r.get("momentum")))
        within.append(None if lo is None else bool(lo * scale <= p <= hi * scale))
        edge.append(r["lr"] in (tried[0], tried[-1]))
    out = {"eps_max": eps_max, "b_noise": b_noise, "batch_size": grid.tolist(),
           "predicted": optimal_lr(grid, eps_max, b_noise).tolist(), "warmup": WARMUP,
           "momentum_assumed_zero": any(v is None for v in m),
           "best": {"batch_size": sizes.astype(int).tolist(), "number": column(trials, "number"),
                    "lr": column(trials, "lr"), "best_effective_lr": eff, "best_warmup_lr": warm,
                    "predicted": predicted.tolist(),
                    "effective_over_predicted": (np.array(eff) / predicted).tolist(),
                    "warmup_over_predicted": (np.array(warm) / predicted).tolist(),
                    "within_grid": within, "best_at_grid_edge": edge}}
    if band:
        out["predicted_ci_low"], out["predicted_ci_high"] = [i.low for i in band], [i.high for i in band]
    return out


def interval_words(d: dict) -> str:
    if "ci_low" not in d:
        return "no interval"
    high = "unbounded" if d["ci_high"] is None else f"{d['ci_high']:.3g}"
    return f"{d['level']:.0%} bootstrap interval {d['ci_low']:.3g} to {high}"


def mccandlish_sentences(mc: dict) -> list[str]:
    """Whether B_noise and B_crit agree, within which intervals; how far eps_opt(B) and the best lr
    per B are apart."""
    bn, bc, ag = mc["b_noise"], mc["b_crit"], mc["agreement"]
    verdict = {"inside": "B_noise lies inside B_crit's interval: they agree",
               "overlap": "B_noise lies outside B_crit's interval but the two intervals overlap: they agree only "
                          "within both intervals",
               "apart": "the two intervals do not overlap: they disagree",
               "no interval": "without both intervals no verdict is given"}[ag["verdict"]]
    out = [f"McCandlish's B_crit ≈ B_noise: B_noise {bn['value']:.3g} examples ({interval_words(bn)}, median over "
           f"{bn['n_trials']} trials of {mc['compared_point_meaning']}) against B_crit {bc['value']:.3g} "
           f"({interval_words(bc)}); B_noise/B_crit = {ag['ratio']:.2f}: {verdict}."]
    lr = mc.get("lr")
    if lr:
        best = lr["best"]
        n_in = sum(bool(w) for w in best["within_grid"])
        ratio = np.array(best["effective_over_predicted"])
        out.append(f"Predicted best lr eps_opt(B) = eps_max/(1 + B_noise/B) with eps_max {lr['eps_max']:.3g}: the "
                   f"sweep's best effective lr lr/(1 - m) lies within one grid step of it at {n_in} of {len(ratio)} "
                   f"batch sizes; best/predicted ranges from {ratio.min():.2f} to {ratio.max():.2f} (with momentum's "
                   f"warm-up counted: {min(best['warmup_over_predicted']):.2f} to "
                   f"{max(best['warmup_over_predicted']):.2f}).")
    return out


def mccandlish_notes(mc: dict) -> list[str]:
    """How the section's values and bands are made, in words (under its plot)."""
    bn = mc["b_noise"]
    t = mc["trials"]
    out = [f"B_noise and eps_max: the median over the {bn['n_trials']} trials with the fewest updates to the target "
           f"per batch size of {mc['compared_point_meaning']} (measurements per trial: "
           + ", ".join(f"B = {b}: {n}" for b, n in zip(t["batch_size"], t["path_points"])) + "); at the target alone "
           f"the median is {bn['at_target_median']:.4g}, along the path {bn['path_mean_median']:.4g}."]
    if "ci_low" in bn:
        out.append(f"Bands and intervals: {bn['method']} over {bn['resamples']} resamples of these trials (seed "
                   f"{bn['seed']}); S(B) and E(B) from B_noise take S_min from the fit.")
    lr = mc.get("lr")
    if lr:
        out.append(f"Learning rates: effective lr = lr/(1 - m); {lr['warmup']}."
                   + (" Trials that recorded no momentum count as m = 0." if lr["momentum_assumed_zero"] else ""))
        edge = [b for b, e in zip(lr["best"]["batch_size"], lr["best"]["best_at_grid_edge"]) if e]
        if edge:
            out.append("The best lr is at an end of the lr values tried at B = " + ", ".join(map(str, edge))
                       + ": there the range, not B, may limit it.")
    return out
