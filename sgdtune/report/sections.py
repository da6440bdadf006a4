"""The numbers of report.json, section by section, from the trial rows (report.inputs).

Each function returns one section as a dict (None when the study cannot show it; build.py
records why under "skipped"). The science behind the fits and slopes: docs/science.md.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..science.fits import (
    accuracy_trend,
    binomial_se,
    critical_batch_fit,
    critical_batch_intervals,
    has_loss_noise,
    is_bound,
    loglog_slope,
    loglog_slope_interval,
    slope_unfit_reason,
    steps_model,
)
from .inputs import best_per_batch, column, is_timing

THEORY_LOSS_NOISE_SLOPE = -0.5  # std of a mean of B losses ~ B^-1/2 on a fixed model (docs/science.md)
GAIN_FLOOR = 0.005  # val_acc per doubling of B below which "the gain fell off" (half a point)
N_TOP = 10  # rows of the top-trials table
N_CURVES = 6  # learning curves drawn, spread over the batch sizes tried
IMPORTANCE_SEED = 0  # fANOVA's random forest: a fixed seed makes importances repeatable
LOSS_NOISE_EXCLUDED = ("no loss noise (0 or not logged): fewer than two full batches per epoch (full batch B >= N, "
                       "or B > N/2 with the short last batch left out), so no successive difference to measure")
NOISE_SE = 2.0  # a difference below this many combined standard errors is "within noise"
ACC_SE_RULE = ("binomial sqrt(p(1-p)/n_val) of the validation set; with replicates combined in quadrature with "
               "the replicate SE (std over seeds / sqrt(R)): sqrt(SE_rep^2 + SE_binom^2), since every replicate "
               "is scored on the same validation examples")


# -- standard errors of val_acc ---------------------------------------------------------------


def val_acc_se(row: dict) -> tuple[float | None, str | None]:
    """A trial's standard error of final_val_acc and where it comes from (ACC_SE_RULE):
    "binomial", "replicates+binomial", "replicates" (n_val unknown), or (None, None)."""
    p, n = row["summary"]["final_val_acc"], row.get("n_val")
    binom = binomial_se(p, n) if n else None
    rep = row["summary"].get("final_val_acc_se")
    if rep is not None:
        return (float(np.hypot(rep, binom)), "replicates+binomial") if binom is not None else (rep, "replicates")
    return (binom, "binomial") if binom is not None else (None, None)


def compare(a: float, se_a: float | None, b: float, se_b: float | None) -> dict:
    """a - b with its combined SE sqrt(se_a^2 + se_b^2) and whether |a - b| < NOISE_SE of it."""
    out: dict[str, Any] = {"difference": a - b, "se": None, "within_noise": None, "rule": f"|diff| < {NOISE_SE:g} SE"}
    if se_a is not None and se_b is not None:
        se = float(np.hypot(se_a, se_b))
        out.update(se=se, within_noise=bool(abs(a - b) < NOISE_SE * se), z=abs(a - b) / se if se > 0 else None)
    return out


def best_rows_per_batch(rows: list[dict]) -> list[dict]:
    """The trial of best final val_acc at each batch size (ties: lower number), by ascending B."""
    best: dict[int, dict] = {}
    for r in sorted(rows, key=lambda r: (-r["summary"]["final_val_acc"], r["number"])):
        best.setdefault(r["batch_size"], r)
    return [best[b] for b in sorted(best)]


def accuracy_section(rows: list[dict]) -> dict:
    """val_acc (with its standard error), train_acc and the generalization gap of each complete
    trial by batch size, and the best val_acc per batch size with the SE of that trial."""
    out: dict[str, Any] = {k: column(rows, k) for k in ("number", "batch_size", "lr", "budget", "budget_size",
                                                     "n_val", "replicates", "final_val_acc", "final_train_acc",
                                                     "final_gen_gap")}
    se = [val_acc_se(r) for r in rows]
    out["final_val_acc_se"], out["final_val_acc_se_source"] = [e for e, _ in se], [w for _, w in se]
    out["se_rule"] = ACC_SE_RULE
    if any(e is None for e, _ in se):
        out["se_missing"] = "No n_val (validation set size) for some trials: no binomial standard error"
    best = best_rows_per_batch(rows)
    out["best_per_batch"] = {"batch_size": column(best, "batch_size"), "number": column(best, "number"),
                             "final_val_acc": column(best, "final_val_acc"),
                             "final_val_acc_se": [val_acc_se(r)[0] for r in best]}
    return out


def equal_budget_comparison(rows: list[dict]) -> dict | None:
    """Within the budget (e.g. 3 epochs) tried with the most batch sizes: best val_acc at the
    largest B against the best at any B. None when no budget saw two batch sizes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["budget"], r["budget_size"]), []).append(r)
    key, group = max(groups.items(), key=lambda kv: (len({r["batch_size"] for r in kv[1]}), kv[0][1] or 0))
    best = best_rows_per_batch(group)
    if len(best) < 2:
        return None
    acc = np.array(column(best, "final_val_acc"), float)
    se = [val_acc_se(r)[0] for r in best]
    i = int(np.argmax(acc))  # ties: the smallest B, as every "best" of the report
    tied = [b for b, a in zip(column(best, "batch_size"), acc) if a == acc[i]]
    return {"budget": key[0], "budget_size": key[1], "batch_size": column(best, "batch_size"),
            "tied_best_batch_sizes": tied,
            "best_val_acc": acc.tolist(), "best_val_acc_se": se,
            "largest_batch_size": best[-1]["batch_size"], "largest_val_acc": float(acc[-1]), "largest_se": se[-1],
            "best_batch_size": best[i]["batch_size"], "best_val_acc_any": float(acc[i]), "best_se": se[i],
            "loss": float(acc[i] - acc[-1]), "loss_vs_noise": compare(acc[i], se[i], acc[-1], se[-1])}


def octave(batch_size: float) -> int:
    """The octave k of B: 2^k <= B < 2^(k+1) (B = 8..15 -> 3)."""
    return int(np.floor(np.log2(batch_size)))


def best_rows_per_octave(rows: list[dict]) -> list[dict]:
    """The trial of best final val_acc in each octave of B (ties: lower number), by ascending B.
    Where B takes only powers of two (a grid, stratify = true) an octave is one batch size."""
    best: dict[int, dict] = {}
    for r in sorted(rows, key=lambda r: (-r["summary"]["final_val_acc"], r["number"])):
        best.setdefault(octave(r["batch_size"]), r)
    return [best[k] for k in sorted(best)]


def per_doubling(rows: list[dict]) -> dict | None:
    """Best val_acc per octave of B (over the lr and budgets tried) and its change per doubling
    between neighbouring octaves; `batch_size` is each octave's best trial's B. Per octave, not
    per sampled value: on a continuous range neighbouring values (8, 9) differ by noise alone."""
    best = best_rows_per_octave(rows)
    if len(best) < 2:
        return None
    sizes = np.array(column(best, "batch_size"), float)
    acc = np.array(column(best, "final_val_acc"), float)
    se = [val_acc_se(r)[0] for r in best]
    doublings = np.diff(np.log2(sizes))
    gain = np.diff(acc) / doublings
    gain_se = [None if a is None or b is None else float(np.hypot(a, b)) / d
               for a, b, d in zip(se, se[1:], doublings)]
    below = np.flatnonzero(gain < GAIN_FLOOR)
    return {"batch_size": sizes.astype(int).tolist(), "best_val_acc": acc.tolist(), "best_val_acc_se": se,
            "gain_per_doubling": gain.tolist(), "gain_per_doubling_se": gain_se, "gain_floor": GAIN_FLOOR,
            "fell_off_at": int(sizes[below[0]]) if below.size else None,
            # the best val_acc at the smallest B against that at the largest: a difference within noise?
            "smallest_vs_largest": compare(acc[0], se[0], acc[-1], se[-1])}


MIN_TREND_OCTAVES = 3  # octaves with a complete trial before a trend over B is fitted


def per_octave(rows: list[dict], complete: list[dict]) -> dict | None:
    """Trials per octave of B (all states, from the Optuna params) and, over the complete ones,
    the best and median val_acc; then the change of val_acc per doubling of B over all complete
    trials (octave_trend). A trend is claimed only when its interval excludes 0."""
    known = [r for r in rows if r["batch_size"]]
    if not complete:
        return None
    ks = sorted({octave(r["batch_size"]) for r in known})
    best = {octave(r["batch_size"]): r for r in best_rows_per_octave(complete)}
    out: dict[str, Any] = {"octave": ks, "batch_size_low": [2 ** k for k in ks],
                           "batch_size_high": [2 ** (k + 1) - 1 for k in ks],
                           "batch_sizes": [sorted({r["batch_size"] for r in known if octave(r["batch_size"]) == k})
                                           for k in ks]}
    # one B seen in an octave (a grid, stratify = true): that B names it; else its range
    out["label"] = [str(v[0]) if len(v) == 1 else f"{2 ** k}-{2 ** (k + 1) - 1}"
                    for k, v in zip(ks, out["batch_sizes"])]
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        out[f"n_{state.lower()}"] = [sum(r["state"] == state and octave(r["batch_size"]) == k for r in known)
                                     for k in ks]
    out["n_trials"] = [sum(octave(r["batch_size"]) == k for r in known) for k in ks]
    pick = [best.get(k) for k in ks]
    out["best_number"] = [r and r["number"] for r in pick]
    out["best_batch_size"] = [r and r["batch_size"] for r in pick]
    out["best_lr"] = [r and r["lr"] for r in pick]
    out["best_val_acc"] = [r and r["summary"]["final_val_acc"] for r in pick]
    out["best_val_acc_se"] = [r and val_acc_se(r)[0] for r in pick]
    out["median_val_acc"] = [float(np.median([r["summary"]["final_val_acc"] for r in complete
                                              if octave(r["batch_size"]) == k])) if best.get(k) else None
                             for k in ks]
    out["fit"] = octave_trend(complete)
    return out


def octave_trend(complete: list[dict]) -> dict:
    """The change of val_acc per doubling of B over every complete trial (science.fits.accuracy_trend:
    weighted least squares on log2 B, sandwich SE, t interval), and whether its interval excludes
    0 (`trend`). Not a line through the best trial per octave: a best of k trials is biased up by an
    amount that varies with k, and a bootstrap of it is no interval (a resampled maximum can only
    fall; an octave of one trial never varies). docs/science.md, section 8."""
    best = best_rows_per_octave(complete)
    rule = (f"a trend needs >= {MIN_TREND_OCTAVES} octaves with a complete trial and a 95% interval of the "
            "slope excluding 0")
    if len(best) < MIN_TREND_OCTAVES:
        return {"trend": False, "rule": rule, "n_octaves": len(best),
                "skipped": f"{len(best)} octave{'s' * (len(best) != 1)} of B with a complete trial; "
                           f"a trend needs at least {MIN_TREND_OCTAVES}"}
    sizes = np.array(column(complete, "batch_size"), float)
    n_val = [r.get("n_val") for r in complete]
    fit = accuracy_trend(sizes, column(complete, "final_val_acc"), None if None in n_val else n_val)
    out: dict[str, Any] = {"n_octaves": len(best), "rule": rule, "n_trials": len(complete),
                           "batch_size": column(best, "batch_size"), "best_val_acc": column(best, "final_val_acc")}
    if fit is None:
        out.update(trend=False, skipped=f"{len(complete)} complete trials; a line with an interval needs at least 4")
        return out
    out["gain_per_doubling"] = fit.slope
    out["ci"] = fit.as_dict()
    out["trend"] = bool(fit.low > 0 or fit.high < 0)
    ends = np.log2([sizes.min(), sizes.max()])  # the fitted line, for the plot (drawn only with a trend)
    out["line"] = {"batch_size": (2 ** ends).tolist(), "val_acc": (fit.intercept + fit.slope * ends).tolist()}
    return out


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


def pick_across_batch_sizes(rows: list[dict], n: int = N_CURVES) -> list[dict]:
    """The best trial at each batch size, at most n of them spread evenly over log B."""
    best = best_rows_per_batch(rows)
    keep = np.unique(np.round(np.linspace(0, len(best) - 1, min(n, len(best)))).astype(int))
    return [best[i] for i in keep]


IMPORTANCE_METHOD = ("Optuna's FanovaImportanceEvaluator (seed {seed}), the share of the objective's variance over "
                     "the whole search space that each parameter explains, from a random forest fitted to the "
                     "complete trials")
DASHBOARD_METHOD = ("Optuna's PedAnovaImportanceEvaluator (default settings), how far each parameter's distribution "
                    "in the best 10% of trials departs from that over all trials")


def importance_section(study: optuna.Study, n_complete: int) -> tuple[dict | None, str | None]:
    """fANOVA importances of the params for the first objective (seeded: repeatable), and beside
    them PED-ANOVA's, the method optuna-dashboard shows, so the two pages can be reconciled."""
    if n_complete < 2:
        return None, f"parameter importances need at least 2 complete trials; got {n_complete}"
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED), target=target)
    except (ValueError, RuntimeError) as e:
        return None, f"parameter importances: {e}"
    out: dict[str, Any] = {"method": f"fANOVA (seed {IMPORTANCE_SEED})", "importance": dict(imp),
                           "method_description": IMPORTANCE_METHOD.format(seed=IMPORTANCE_SEED),
                           "dashboard_method": "PED-ANOVA", "dashboard_method_description": DASHBOARD_METHOD}
    try:
        out["ped_anova"] = ped_anova(study)
    except (ValueError, RuntimeError) as e:  # e.g. too few trials for its quantiles
        out["ped_anova_skipped"] = str(e)
    return out, None


def ped_anova(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA importances toward the *best* values of the first objective. With several
    objectives the first is passed as a target, which PED-ANOVA always minimizes (and warns that
    it does): a maximized objective is negated, so the top quantile is the high val_acc, and the
    warning, now answered, is not shown."""
    if len(study.directions) == 1:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*low `target` values", category=UserWarning)
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=lambda t: sign * t.values[0]))


def history_section(study: optuna.Study, objective: str) -> dict | None:
    """The first objective of each complete trial, in trial order, and the best so far."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        return None
    number = [t.number for t in trials]
    value = np.array([t.values[0] for t in trials], float)
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    best = np.maximum.accumulate(value) if maximize else np.minimum.accumulate(value)
    return {"objective": objective, "direction": "maximize" if maximize else "minimize",
            "number": number, "value": value.tolist(), "best_so_far": best.tolist()}


def top_trials(rows: list[dict], n: int = N_TOP) -> list[dict]:
    """The n best complete trials by final val_acc (ties: lower trial number first)."""
    keys = ("final_val_acc", "final_test_acc", "final_train_acc", "final_gen_gap", "final_loss_noise",
            "final_grad_noise_scale", "updates", "updates_to_target")
    ranked = sorted(rows, key=lambda r: (-r["summary"]["final_val_acc"], r["number"]))[:n]
    return [{"number": r["number"], "batch_size": r["batch_size"], "lr": r["lr"], "budget": r["budget"],
             "budget_size": r["budget_size"], **{k: r["summary"].get(k) for k in keys},
             "final_val_acc_se": val_acc_se(r)[0]} for r in ranked]


def pareto_front(acc: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Indices (by time) of the trials no other beats on both higher val_acc and lower time."""
    order = np.lexsort((-acc, time))
    running = np.maximum.accumulate(acc[order])
    better = np.concatenate([[True], acc[order][1:] > running[:-1]])
    return order[better]


def timings(study: optuna.Study, complete: list[dict]) -> dict:
    """Compute time, throughput and the val_acc / compute-time Pareto front (all volatile)."""
    measured = {t.number: {k: v for k, v in t.user_attrs.get("summary", {}).items() if is_timing(k)}
                for t in study.get_trials(deepcopy=False)}
    out: dict[str, Any] = {"trials": {str(n): m for n, m in measured.items() if m}}
    rows = [r for r in complete if "compute_time_s" in measured.get(r["number"], {})]
    if not rows:
        return out
    metric = "gpu_time_s" if all("gpu_time_s" in measured[r["number"]] for r in rows) else "compute_time_s"
    time = np.array([measured[r["number"]][metric] for r in rows], float)
    acc = np.array(column(rows, "final_val_acc"), float)
    front = pareto_front(acc, time)
    fastest = int(np.argmin(time))
    out["compute"] = {"time_metric": metric, "number": column(rows, "number"), "batch_size": column(rows, "batch_size"),
                      "time_s": time, "final_val_acc": acc,
                      "throughput_eps": [measured[r["number"]].get("throughput_eps") for r in rows]}
    out["pareto"] = {"number": [rows[i]["number"] for i in front], "time_s": time[front], "final_val_acc": acc[front]}
    out["summary"] = [
        f"Fastest complete trial: {rows[fastest]['number']} (B = {rows[fastest]['batch_size']}) in "
        f"{time[fastest]:.3g} s of {metric}; the Pareto front of val_acc against {metric} holds trials "
        f"{', '.join(str(rows[i]['number']) for i in front)}."]
    return out

