"""The numbers of report.json, section by section, from the trial rows (report.inputs).

Each function returns one section as a dict (None when the study cannot show it; build.py
records why under "skipped"). The science behind the fits and slopes: docs/science.md. The
sections on noise and curvature (loss noise, updates to target, noise scale, sharpness) are in
noise_sections.py.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ..science.fits import accuracy_trend, binomial_se
from .inputs import column, is_timing

GAIN_FLOOR = 0.005  # val_acc per doubling of B below which "the gain fell off" (half a point)
N_TOP = 10  # rows of the top-trials table
N_CURVES = 6  # learning curves drawn, spread over the batch sizes tried
IMPORTANCE_SEED = 0  # fANOVA's random forest: a fixed seed makes importances repeatable
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

