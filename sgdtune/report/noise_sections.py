"""The report's sections on SGD's noise and the curvature it meets, from the trial rows
(report.inputs): loss noise against B, updates to a target with the S(B) fit (the critical
batch size), the gradient noise scale B_simple, and sharpness against the edge of stability.

Each function returns one section as a dict (None when the study cannot show it), as in
sections.py. The science behind the fits and slopes: docs/science.md.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from ..science.fits import (
    critical_batch_fit,
    critical_batch_intervals,
    has_loss_noise,
    is_bound,
    loglog_slope,
    loglog_slope_interval,
    slope_unfit_reason,
    steps_model,
)
from .inputs import best_per_batch, column

THEORY_LOSS_NOISE_SLOPE = -0.5  # std of a mean of B losses ~ B^-1/2 on a fixed model (docs/science.md)
LOSS_NOISE_EXCLUDED = ("no loss noise (0 or not logged): fewer than two full batches per epoch (full batch B >= N, "
                       "or B > N/2 with the short last batch left out), so no successive difference to measure")


def loss_noise_section(rows: list[dict], n_train: float, parent_metrics: dict) -> dict | None:
    """Final loss noise against B (log-log), its fitted slope with a bootstrap interval, and the
    theory's -0.5 through the centroid.

    As in science.fits.study_metrics, every trial with a loss noise enters (has_loss_noise:
    B < N, value > 0): successive differences within an epoch follow sigma/sqrt(B) at every
    B < N, so there is no N/8 cut. Trials without a measurement are listed as excluded: full
    batch (one batch per epoch, loss noise 0), and B > N/2, whose one full batch per epoch leaves
    no successive difference once the short last batch is left out. The slope is fitted only
    over >= 3 distinct sizes spanning >= 4x (slope_unfit_reason).

    The values come from trained models that differ in lr and length. A "clean" measurement
    (forward passes only, at one model's final weights, over a grid of B) would isolate the
    1/sqrt(B) law, but it needs trained weights, which the stores do not keep (metrics only),
    so the report does not make it.
    """
    def n_of(r):
        return r.get("n_train") or n_train

    pts = [r for r in rows if has_loss_noise(r["batch_size"], r["summary"].get("final_loss_noise"), n_of(r))]
    left = [r for r in rows if r not in pts]
    if not pts:
        return None
    b, y = np.array(column(pts, "batch_size"), float), np.array(column(pts, "final_loss_noise"), float)
    out = {"number": column(pts, "number"), "batch_size": b.astype(int).tolist(), "loss_noise": y.tolist(),
           "lr": column(pts, "lr"),
           "excluded": {"number": column(left, "number"), "batch_size": column(left, "batch_size"),
                        "full_batch": [r["batch_size"] >= n_of(r) for r in left], "reason": LOSS_NOISE_EXCLUDED},
           "theory_slope": THEORY_LOSS_NOISE_SLOPE, "parent_run_slope": parent_metrics.get("loss_noise_slope"),
           # the clean measurement: forward-only batches of B over one model, the best trial's final weights
           "fixed_model_slope": parent_metrics.get("fixed_model_loss_noise_slope")}
    why = slope_unfit_reason(b)
    if why is not None:
        out["fit_skipped"] = why
        return out
    slope = loglog_slope(b, y)
    cx, cy = np.log(b).mean(), np.log(y).mean()  # least-squares lines pass through the centroid
    ends = np.array([b.min(), b.max()])

    def line(k: float) -> dict:
        return {"batch_size": ends.tolist(), "loss_noise": np.exp(cy + k * (np.log(ends) - cx)).tolist()}

    out.update({"slope": slope, "fit_line": line(slope), "theory_line": line(THEORY_LOSS_NOISE_SLOPE),
                "n_fitted": len(pts), "fit_batch_sizes": [int(b.min()), int(b.max())]})
    ci = loglog_slope_interval(b, y)
    if ci is not None:
        out["slope_ci"] = ci.as_dict()
        out["theory_in_ci"] = bool(ci.low <= THEORY_LOSS_NOISE_SLOPE <= ci.high)
    # the fitted line is drawn, and the slope stated as a trend, only when its interval excludes 0
    out["trend"] = bool(ci is not None and (ci.low > 0 or ci.high < 0))
    return out


def steps_section(rows: list[dict], complete: list[FrozenTrial], target: float | None) -> dict | None:
    """Updates-to-target against B and the fit S = S_min (1 + B_crit / B) to the best per B."""
    pts = [r for r in rows if r["summary"].get("updates_to_target") is not None]
    if not pts:
        return None
    out = {"target_val_acc": target, **{k: column(pts, k) for k in
                                         ("number", "batch_size", "updates_to_target", "examples_to_target")}}
    if any(r["summary"].get("updates_to_target_se") is not None for r in pts):  # replicates: their SE
        out["updates_to_target_se"] = column(pts, "updates_to_target_se")
    sizes, best = best_per_batch(pts, "updates_to_target", best=min)
    out["best"] = {"batch_size": sizes.astype(int).tolist(), "updates_to_target": best.tolist()}
    if sizes.size >= 2:  # measured speed-up per doubling between neighbouring sizes
        out["best"]["speedup_per_doubling"] = (best[:-1] / best[1:]) ** (1 / np.diff(np.log2(sizes)))
    fit = critical_batch_fit(complete)
    if fit is not None:
        grid = np.geomspace(sizes.min(), sizes.max(), 40)
        out["fit"] = {"s_min": fit.s_min, "b_crit": fit.b_crit, "e_min": fit.e_min,
                      # doubling B cuts S by (1 + c/B) / (1 + c/2B), which falls below 1.5x above B = c/2
                      "speedup_below_1p5_above": fit.b_crit / 2,
                      "curve": {"batch_size": grid.tolist(),
                                "updates": steps_model(grid, fit.s_min, fit.b_crit).tolist()}}
        ci = critical_batch_intervals(out["batch_size"], out["updates_to_target"])
        if ci is not None:  # ci_high None in report.json (inf): resamples showing perfect scaling throughout
            out["fit"]["b_crit_ci"], out["fit"]["s_min_ci"] = ci["b_crit"].as_dict(), ci["s_min"].as_dict()
        else:
            out["fit"]["ci_skipped"] = "fewer than half the bootstrap resamples held 2 batch sizes"
    return out


B_SIMPLE_ABOVE_N = ("B_simple exceeds n_train: |G|^2 is small against the per-example gradient variance, as near a "
                    "minimum of the training loss, so even a full-batch step is noise-dominated by this measure; "
                    "it bounds no critical batch size beyond the data")


def noise_scale_section(
    rows: list[dict], curves: dict[int, dict], steps: dict | None, parent_metrics: dict, n_train: float = np.inf
) -> dict | None:
    """Gradient noise scale B_simple over training, its median at the end, and the critical batch
    size where the S(B) fit to updates-to-target gives one.

    B_simple = tr(Sigma)/|G|^2 is a noise scale, not a critical batch size: McCandlish et al.
    relate B_crit to B_noise = tr(H Sigma)/(G^T H G), which equals B_simple only for a Hessian
    proportional to the identity (docs/science.md, section 3). So `critical_batch_size` holds
    the S(B) fit's B_crit, or no value; the median B_simple is `b_simple`, flagged where it
    exceeds n_train.

    A trial's final value may carry a standard error (final_grad_noise_scale_se) and may be only
    a lower bound (final_grad_noise_scale_bound = 1: |G|^2 not resolved; with replicates the flag
    is their mean, and a value counts as a bound when at least half the replicates were). Bounds are left out of
    the median, as in science.fits.study_metrics, and listed separately; when every value is a
    bound the median of the bounds is reported, as a lower bound on the median."""
    final = [r for r in rows if r["summary"].get("final_grad_noise_scale") is not None]
    if not final:
        return None
    values = np.array(column(final, "final_grad_noise_scale"), float)
    bound = np.array([is_bound(r["summary"]) for r in final])
    estimates = values[~bound] if (~bound).any() else values
    median = float(np.median(estimates))
    all_bounds = bool(bound.all())
    b_simple: dict[str, Any] = {
        "value": median, "lower_bound": all_bounds, "n_train": None if not np.isfinite(n_train) else int(n_train),
        "source": ("a lower bound: the median of the trials' lower bounds on B_simple" if all_bounds else
                   "the median final gradient noise scale B_simple (a noise scale, not a critical batch size)"),
        "above_n_train": bool(np.isfinite(n_train) and median > n_train)}
    if b_simple["above_n_train"]:
        b_simple["meaning"] = B_SIMPLE_ABOVE_N
    if steps and "fit" in steps:
        b_crit = {"value": steps["fit"]["b_crit"], "source": "S(B) fit to updates-to-target"}
        ci = steps["fit"].get("b_crit_ci")
        if ci:
            b_crit.update({k: ci[k] for k in ("ci_low", "ci_high", "level")})
    else:
        b_crit = {"value": None, "source": "not estimated: it needs updates to a target at 2 or more batch sizes "
                                           "(train.target_val_acc); B_simple is not a critical batch size"}
    b_crit["parent_run_value"] = parent_metrics.get("critical_batch_size")
    reference, compared = (b_crit["value"], "B_crit") if b_crit["value"] is not None else (median, "B_simple")
    sizes = sorted({r["batch_size"] for r in rows})
    se = column(final, "final_grad_noise_scale_se")
    return {"median_final": median, "median_is_lower_bound": all_bounds,
            "median_over": "lower bounds" if all_bounds else "estimates (lower bounds left out)",
            "n_estimates": int((~bound).sum()), "n_bounds": int(bound.sum()),
            "min_final": estimates.min(), "max_final": estimates.max(),
            "parent_run_median": parent_metrics.get("median_grad_noise_scale"), "critical_batch_size": b_crit,
            "b_simple": b_simple, "compared_with": compared,
            "batch_sizes_above": [b for b in sizes if b > reference],
            "batch_sizes_below": [b for b in sizes if b <= reference],
            "final": {"number": column(final, "number"), "batch_size": column(final, "batch_size"),
                      "grad_noise_scale": values, "grad_noise_scale_se": se, "lower_bound": bound.tolist()},
            "curves": [{"number": r["number"], "batch_size": r["batch_size"], "epoch": curves[r["number"]]["step"],
                        "grad_noise_scale": curves[r["number"]]["value"]} for r in rows if r["number"] in curves]}


ADAM_SHARPNESS = ("Adam: lr·λ_max of the raw Hessian is shown but compared with no limit; Adam's stability concerns "
                  "the Hessian preconditioned by its second-moment estimate (Cohen et al. 2022: about 38/lr at "
                  "β1 = 0.9), which sgdtune does not measure")
WEIGHT_DECAY_NOTE = ("The Hessian (and the gradient-noise probe) use the data loss only, while the optimizer also "
                     "applied weight decay wd: the full objective's top eigenvalue is λ_max + wd (given as "
                     "final_sharpness_with_decay); its gradient adds wd·w to G, which the noise scale leaves out")


def stability_limit(row: dict) -> tuple[float | None, str]:
    """The full-batch stability limit of lr·λ_max for a trial's optimizer, and how it was set:
    2(1 + m) under SGD with heavy-ball momentum m (3.8 at m = 0.9; docs/science.md, section 7),
    None under Adam (ADAM_SHARPNESS). A trial that recorded no momentum counts as m = 0."""
    if row.get("optimizer") == "adam":
        return None, "adam"
    m = row.get("momentum")
    return 2 * (1 + (m or 0.0)), "sgd" if m is not None else "momentum not recorded: m = 0 assumed"


def sharpness_section(rows: list[dict], n_train: float,
                      paths: dict[int, dict] | None = None) -> tuple[dict | None, str]:
    """Final sharpness (top Hessian eigenvalue of the training loss) against B, lr·λ_max against the
    stability limit of each trial's optimizer (stability_limit), and for full-batch trials (B >= N)
    λ_max against the edge of stability 2(1 + m)/lr (docs/science.md section 7). `paths`: per trial
    number, {"updates": [...], "sharpness": [...]} along training (the MLflow histories); full-batch
    trials with one get it drawn against updates beside their edge."""
    pts = [r for r in rows if r["summary"].get("final_sharpness") is not None]
    if not pts:
        return None, "no trial recorded final_sharpness (the trainer did not measure it, or an older store)"
    out: dict[str, Any] = {k: column(pts, k) for k in ("number", "batch_size", "lr", "final_sharpness",
                                                        "final_lr_sharpness", "optimizer", "momentum",
                                                        "weight_decay")}
    limits = [stability_limit(r) for r in pts]
    out["stability_limit"] = [x for x, _ in limits]
    out["stability_limit_basis"] = [why for _, why in limits]
    out["stability_rule"] = "full-batch GD with heavy-ball momentum m is stable for lr·λ_max < 2(1 + m)"
    out["lr_sharpness_to_limit"] = [None if x is None or k is None else k / x
                                    for k, (x, _) in zip(out["final_lr_sharpness"], limits)]
    if any(why == "adam" for _, why in limits):
        out["adam"] = ADAM_SHARPNESS
    if any((r.get("weight_decay") or 0) > 0 for r in pts):
        out["weight_decay_note"] = WEIGHT_DECAY_NOTE
        out["final_sharpness_with_decay"] = [r["summary"]["final_sharpness"] + (r.get("weight_decay") or 0.0)
                                             for r in pts]
    full = [(r, x) for r, (x, _) in zip(pts, limits)
            if r["batch_size"] >= (r.get("n_train") or n_train) and r["lr"] and x is not None]
    if full:
        fb = [r for r, _ in full]
        out["full_batch"] = {"number": column(fb, "number"), "batch_size": column(fb, "batch_size"),
                             "lr": column(fb, "lr"), "two_over_lr": [2 / r["lr"] for r in fb],
                             "edge": [x / r["lr"] for r, x in full], "momentum": column(fb, "momentum"),
                             "final_sharpness": column(fb, "final_sharpness")}
        out["full_batch"]["ratio_to_edge"] = [s / t for s, t in zip(out["full_batch"]["final_sharpness"],
                                                                     out["full_batch"]["edge"])]
        out["full_batch"]["paths"] = [
            {"number": r["number"], "lr": r["lr"], "momentum": r.get("momentum") or 0.0, "limit": x / r["lr"],
             "updates": paths[r["number"]]["updates"], "sharpness": paths[r["number"]]["sharpness"],
             "lr_sharpness": [r["lr"] * v for v in paths[r["number"]]["sharpness"]]}
            for r, x in full if paths and r["number"] in paths and paths[r["number"]]["sharpness"]]
    else:
        out["full_batch_skipped"] = ("No full-batch SGD trial (B >= n_train) with a sharpness: no edge-of-stability "
                                     "check")
    return out, ""
