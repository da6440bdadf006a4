"""The numbers of report.json, section by section, from the trial rows (report.inputs).

Each function returns one section as a dict (None when the study cannot show it; build.py
records why under "skipped"). The science behind the fits and slopes: docs/science.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..science.fits import critical_batch_fit, loglog_slope, small_batch_limit, steps_model
from .inputs import TIMING_KEYS, best_per_batch, column

THEORY_LOSS_NOISE_SLOPE = -0.5  # std of a mean of B losses ~ B^-1/2 on a fixed model (docs/science.md)
GAIN_FLOOR = 0.005  # val_acc per doubling of B below which "the gain fell off" (half a point)
N_TOP = 10  # rows of the top-trials table
N_CURVES = 6  # learning curves drawn, spread over the batch sizes tried
IMPORTANCE_SEED = 0  # fANOVA's random forest: a fixed seed makes importances repeatable


def accuracy_section(rows: list[dict]) -> dict:
    """val_acc, train_acc and the generalization gap of each complete trial, by batch size."""
    return {k: column(rows, k) for k in ("number", "batch_size", "lr", "budget", "budget_size",
                                       "final_val_acc", "final_train_acc", "final_gen_gap")}


def equal_budget_comparison(rows: list[dict]) -> dict | None:
    """Within the budget (e.g. 3 epochs) tried with the most batch sizes: best val_acc at the
    largest B against the best at any B. None when no budget saw two batch sizes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["budget"], r["budget_size"]), []).append(r)
    key, group = max(groups.items(), key=lambda kv: (len({r["batch_size"] for r in kv[1]}), kv[0][1] or 0))
    sizes, acc = best_per_batch(group, "final_val_acc")
    if sizes.size < 2:
        return None
    i = int(np.argmax(acc))
    return {"budget": key[0], "budget_size": key[1], "batch_size": sizes.astype(int).tolist(),
            "best_val_acc": acc.tolist(), "largest_batch_size": int(sizes[-1]), "largest_val_acc": float(acc[-1]),
            "best_batch_size": int(sizes[i]), "best_val_acc_any": float(acc[i]), "loss": float(acc[i] - acc[-1])}


def per_doubling(rows: list[dict]) -> dict | None:
    """Best val_acc per batch size (over the lr and budgets tried) and its change per doubling of B."""
    sizes, acc = best_per_batch(rows, "final_val_acc")
    if sizes.size < 2:
        return None
    gain = np.diff(acc) / np.diff(np.log2(sizes))
    below = np.flatnonzero(gain < GAIN_FLOOR)
    return {"batch_size": sizes.astype(int).tolist(), "best_val_acc": acc.tolist(),
            "gain_per_doubling": gain.tolist(), "gain_floor": GAIN_FLOOR,
            "fell_off_at": int(sizes[below[0]]) if below.size else None}


def loss_noise_section(rows: list[dict], n_train: float, parent_metrics: dict) -> dict | None:
    """Final loss noise against B (log-log), its fitted slope, and the theory's -0.5 through the centroid.

    As in science.fits.study_metrics, the slope is fitted over B <= small_batch_limit(N) only.
    """
    pts = [r for r in rows if (r["summary"].get("final_loss_noise") or 0) > 0]
    if not pts:
        return None
    b, y = np.array(column(pts, "batch_size"), float), np.array(column(pts, "final_loss_noise"), float)
    limit = small_batch_limit(n_train)
    in_fit = b <= limit
    out = {"number": column(pts, "number"), "batch_size": b.astype(int).tolist(), "loss_noise": y.tolist(),
           "lr": column(pts, "lr"), "in_fit": in_fit.tolist(), "fit_max_batch_size": limit,
           "theory_slope": THEORY_LOSS_NOISE_SLOPE, "parent_run_slope": parent_metrics.get("loss_noise_slope")}
    if np.unique(b[in_fit]).size < 2:
        out["fit_skipped"] = f"fewer than 2 batch sizes <= N/8 = {limit:.0f}, where 1/sqrt(B) applies"
        return out
    bf, yf = b[in_fit], y[in_fit]
    slope = loglog_slope(bf, yf)
    cx, cy = np.log(bf).mean(), np.log(yf).mean()  # least-squares lines pass through the centroid
    ends = np.array([bf.min(), bf.max()])

    def line(k: float) -> dict:
        return {"batch_size": ends.tolist(), "loss_noise": np.exp(cy + k * (np.log(ends) - cx)).tolist()}

    out.update({"slope": slope, "fit_line": line(slope), "theory_line": line(THEORY_LOSS_NOISE_SLOPE)})
    return out


def steps_section(rows: list[dict], complete: list[FrozenTrial], target: float | None) -> dict | None:
    """Updates-to-target against B and the fit S = S_min (1 + B_crit / B) to the best per B."""
    pts = [r for r in rows if r["summary"].get("updates_to_target") is not None]
    if not pts:
        return None
    out = {"target_val_acc": target, **{k: column(pts, k) for k in
                                         ("number", "batch_size", "updates_to_target", "examples_to_target")}}
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
    return out


def noise_scale_section(
    rows: list[dict], curves: dict[int, dict], steps: dict | None, parent_metrics: dict
) -> dict | None:
    """Gradient noise scale over training and the critical batch size estimate."""
    final = [r for r in rows if r["summary"].get("final_grad_noise_scale") is not None]
    if not final:
        return None
    values = np.array(column(final, "final_grad_noise_scale"), float)
    b_noise = float(np.median(values))
    if steps and "fit" in steps:
        b_crit = {"value": steps["fit"]["b_crit"], "source": "S(B) fit to updates-to-target"}
    else:
        b_crit = {"value": b_noise, "source": "B_noise, the median final gradient noise scale"}
    b_crit["parent_run_value"] = parent_metrics.get("critical_batch_size")
    sizes = sorted({r["batch_size"] for r in rows})
    return {"median_final": b_noise, "min_final": values.min(), "max_final": values.max(),
            "parent_run_median": parent_metrics.get("median_grad_noise_scale"), "critical_batch_size": b_crit,
            "batch_sizes_above": [b for b in sizes if b > b_crit["value"]],
            "batch_sizes_below": [b for b in sizes if b <= b_crit["value"]],
            "final": {"number": column(final, "number"), "batch_size": column(final, "batch_size"),
                      "grad_noise_scale": values},
            "curves": [{"number": r["number"], "batch_size": r["batch_size"], "epoch": curves[r["number"]]["step"],
                        "grad_noise_scale": curves[r["number"]]["value"]} for r in rows if r["number"] in curves]}


def pick_across_batch_sizes(rows: list[dict], n: int = N_CURVES) -> list[dict]:
    """The best trial at each batch size, at most n of them spread evenly over log B."""
    best: dict[int, dict] = {}
    for r in sorted(rows, key=lambda r: (-r["summary"]["final_val_acc"], r["number"])):
        best.setdefault(r["batch_size"], r)
    sizes = sorted(best)
    keep = np.unique(np.round(np.linspace(0, len(sizes) - 1, min(n, len(sizes)))).astype(int))
    return [best[sizes[i]] for i in keep]


def importance_section(study: optuna.Study, n_complete: int) -> tuple[dict | None, str | None]:
    """fANOVA importances of the params for the first objective (seeded: repeatable)."""
    if n_complete < 2:
        return None, f"parameter importances need at least 2 complete trials; got {n_complete}"
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED), target=target)
    except (ValueError, RuntimeError) as e:
        return None, f"parameter importances: {e}"
    return {"method": f"fANOVA (seed {IMPORTANCE_SEED})", "importance": dict(imp)}, None


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
    keys = ("final_val_acc", "final_train_acc", "final_gen_gap", "final_loss_noise", "final_grad_noise_scale",
            "updates", "updates_to_target")
    ranked = sorted(rows, key=lambda r: (-r["summary"]["final_val_acc"], r["number"]))[:n]
    return [{"number": r["number"], "batch_size": r["batch_size"], "lr": r["lr"], "budget": r["budget"],
             "budget_size": r["budget_size"], **{k: r["summary"].get(k) for k in keys}} for r in ranked]


def pareto_front(acc: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Indices (by time) of the trials no other beats on both higher val_acc and lower time."""
    order = np.lexsort((-acc, time))
    running = np.maximum.accumulate(acc[order])
    better = np.concatenate([[True], acc[order][1:] > running[:-1]])
    return order[better]


def timings(study: optuna.Study, complete: list[dict]) -> dict:
    """Compute time, throughput and the val_acc / compute-time Pareto front (all volatile)."""
    measured = {t.number: {k: v for k, v in t.user_attrs.get("summary", {}).items() if k in TIMING_KEYS}
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

