"""Sweep report: Optuna study + MLflow runs -> report.json -> report.html.

`python -m sgdtune.report` writes reports/<study>/report.json (every number the report
shows) and report.html (self-contained: plotly.js inlined once, no network request), then
logs both as artifacts of the study's parent MLflow run.

Two rules keep it reproducible and honest:
- render_html(report) reads nothing but the report dict: the page draws report.json.
- What differs between two runs of the same command (timings, memory, MLflow ids, paths,
  dates) lives under the top-level key "volatile"; the rest is a function of the study.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from .science.fits import critical_batch_fit, loglog_slope, small_batch_limit, steps_model
from .report_html import fmt, render_html
from .stores import MLRUNS, default_storage_url, open_storage
from .tracking import Tracker, default_tracking_uri, redact_url, ui_url

# The experiment file is read back from MLflow; a progress bar for one small file is noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SCHEMA = "sgdtune.report/1"
TIMING_KEYS = ("compute_time_s", "gpu_time_s", "wall_time_s", "noise_probe_time_s", "throughput_eps")
MEMORY_KEYS = ("peak_mem_mb",)
SIG_DIGITS = 10  # every float in report.json: enough for equality with the stores, no last-bit noise
THEORY_LOSS_NOISE_SLOPE = -0.5  # std of a mean of B losses ~ B^-1/2 on a fixed model (SCIENCE.md)
GAIN_FLOOR = 0.005  # val_acc per doubling of B below which "the gain fell off" (half a point)
N_TOP = 10  # rows of the top-trials table
N_CURVES = 6  # learning curves drawn, spread over the batch sizes tried
IMPORTANCE_SEED = 0  # fANOVA's random forest: a fixed seed makes importances repeatable
EXIT_BAD_INPUT = 2


class ReportError(ValueError):
    """Bad input to the report: the message names the field, what is allowed, what was given."""


# -- finding the study and its runs -----------------------------------------------------------


def load_study(storage: str, study_name: str | None) -> optuna.Study:
    """The named study, or the only one in the storage."""
    if "://" not in storage and not Path(storage).is_file():
        raise ReportError(f"--storage: must be an existing Optuna journal file or a database URL; got {storage!r} "
                          "(run `python -m sgdtune.study` first, or pass --storage)")
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"--storage: must name an existing SQLite file; got {storage!r}")
    names = sorted(optuna.get_all_study_names(storage=open_storage(storage)))
    if not names:
        raise ReportError(f"--storage: must hold a study; got {redact_url(storage)!r}, which holds none "
                          "(run `python -m sgdtune.study` first)")
    if study_name is None:
        if len(names) > 1:
            raise ReportError(f"--study-name: required when the storage holds several studies; one of "
                              f"{', '.join(map(repr, names))}; got none")
        study_name = names[0]
    if study_name not in names:
        raise ReportError(f"--study-name: must be one of {', '.join(map(repr, names))}; got {study_name!r}")
    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def connect_mlflow(study: optuna.Study, tracking_uri: str) -> Tracker | None:
    """The study's MLflow experiment, or None for a study run with --no-tracking."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None:
        return None
    recorded = study.user_attrs.get("tracking_uri")
    hint = f"; the study recorded its runs at {recorded!r}" if recorded and recorded != tracking_uri else ""
    # Tracker creates a missing experiment; check first, so a wrong URI writes nothing.
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"--tracking-uri: must name an existing MLflow store; "
                          f"got {redact_url(tracking_uri)!r}{hint}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).get_run(parent_id)
    except MlflowException:
        raise ReportError(f"--tracking-uri: must hold the study's parent run {parent_id}; got "
                          f"{redact_url(tracking_uri)!r}{hint}") from None
    return Tracker(tracking_uri, study.study_name)


def child_runs(tracker: Tracker, parent_id: str) -> dict[int, Any]:
    """Trial number -> MLflow child run (all pages of the search)."""
    runs, token = {}, None
    while True:
        page = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000, page_token=token
        )
        for run in page:
            runs[int(run.data.tags["sgdtune.trial_number"])] = run
        token = page.token
        if not token:
            return runs


def metric_curve(tracker: Tracker, run_id: str, key: str) -> dict[str, list]:
    """{"step": [...], "value": [...]} of one per-epoch metric, by step (last value per step)."""
    history = sorted(tracker.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    by_step = {m.step: m.value for m in history}
    steps = sorted(by_step)
    return {"step": steps, "value": [by_step[s] for s in steps]}


# -- one row per trial --------------------------------------------------------------------------


def trial_rows(study: optuna.Study, runs: dict[int, Any], objectives: Sequence[str]) -> list[dict]:
    """Each trial's params, objective values and summary, with the MLflow params where it has a run.

    batch_size and lr come from MLflow when present: there `lr` is what the optimizer used
    (after any scaling), while Optuna holds the suggested (base) value. Timings (in the
    summary, or an objective such as compute_time_s) are left to "volatile".
    """
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        p = runs[t.number].data.params if t.number in runs else {}
        summary = t.user_attrs.get("summary", {})
        budget = p.get("budget") or next((k for k in ("epochs", "updates", "examples") if k in t.params), None)
        size = p.get(budget, t.params.get(budget)) if budget else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "params": dict(t.params),
            "batch_size": _num(p.get("batch_size", t.params.get("batch_size")), int),
            "lr": _num(p.get("lr", t.params.get("lr")), float),
            "budget": budget,
            "budget_size": _num(size, int),
            "seed": _num(p.get("seed"), int),
            "values": {o: v for o, v in zip(objectives, t.values or []) if o not in TIMING_KEYS},
            "summary": {k: v for k, v in summary.items() if k not in TIMING_KEYS + MEMORY_KEYS},
            "fail_reason": t.user_attrs.get("fail_reason"),
        })
    return rows


def _num(value, kind):
    return None if value in (None, "None", "") else kind(float(value))


def _complete(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["state"] == "COMPLETE" and r["batch_size"] and "final_val_acc" in r["summary"]]


def _col(rows: list[dict], key: str) -> list:
    """One column: a row key, or a summary metric (None where absent)."""
    return [r[key] if key in r else r["summary"].get(key) for r in rows]


def best_per_batch(rows: list[dict], key: str, best=max) -> tuple[np.ndarray, np.ndarray]:
    """Distinct batch sizes (ascending) and the best value of `key` at each."""
    pairs = [(r["batch_size"], r["summary"][key]) for r in rows if r["summary"].get(key) is not None]
    out: dict[int, float] = {}
    for b, v in pairs:
        out[b] = best(out.get(b, v), v)
    sizes = np.array(sorted(out), dtype=float)
    return sizes, np.array([out[int(b)] for b in sizes], dtype=float)


# -- the sections -----------------------------------------------------------------------------


def accuracy_section(rows: list[dict]) -> dict:
    """val_acc, train_acc and the generalization gap of each complete trial, by batch size."""
    return {k: _col(rows, k) for k in ("number", "batch_size", "lr", "budget", "budget_size",
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
    b, y = np.array(_col(pts, "batch_size"), float), np.array(_col(pts, "final_loss_noise"), float)
    limit = small_batch_limit(n_train)
    in_fit = b <= limit
    out = {"number": _col(pts, "number"), "batch_size": b.astype(int).tolist(), "loss_noise": y.tolist(),
           "lr": _col(pts, "lr"), "in_fit": in_fit.tolist(), "fit_max_batch_size": limit,
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
    out = {"target_val_acc": target, **{k: _col(pts, k) for k in
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
    values = np.array(_col(final, "final_grad_noise_scale"), float)
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
            "final": {"number": _col(final, "number"), "batch_size": _col(final, "batch_size"),
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
    acc = np.array(_col(rows, "final_val_acc"), float)
    front = pareto_front(acc, time)
    fastest = int(np.argmin(time))
    out["compute"] = {"time_metric": metric, "number": _col(rows, "number"), "batch_size": _col(rows, "batch_size"),
                      "time_s": time, "final_val_acc": acc,
                      "throughput_eps": [measured[r["number"]].get("throughput_eps") for r in rows]}
    out["pareto"] = {"number": [rows[i]["number"] for i in front], "time_s": time[front], "final_val_acc": acc[front]}
    out["summary"] = [
        f"Fastest complete trial: {rows[fastest]['number']} (B = {rows[fastest]['batch_size']}) in "
        f"{time[fastest]:.3g} s of {metric}; the Pareto front of val_acc against {metric} holds trials "
        f"{', '.join(str(rows[i]['number']) for i in front)}."]
    return out


# -- the plain-language summary -------------------------------------------------------------------


def summary_sentences(report: dict, complete: list[dict]) -> list[str]:
    """Sentences computed from the report's numbers; each says what it compares."""
    s = report["study"]["trials_by_state"]
    out = [f"{sum(s.values())} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.items())) + "."]
    if not complete:
        return out
    best = max(complete, key=lambda r: (r["summary"]["final_val_acc"], -r["number"]))
    sizes = sorted({r["batch_size"] for r in complete})
    tried = f"batch sizes {sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"batch size {sizes[0]}"
    out.append(f"Best val_acc {best['summary']['final_val_acc']:.4f} at batch size {best['batch_size']} (trial "
               f"{best['number']}, lr {fmt(best['lr'], '.3g')}, {best['budget']} = {best['budget_size']}), among "
               f"{len(complete)} complete trial{'s' * (len(complete) > 1)} with {tried}.")
    eq = report.get("equal_budget")
    if eq:
        sizes_tried = ", ".join(map(str, eq["batch_size"]))
        head = f"At equal budget ({eq['budget']} = {eq['budget_size']}, batch sizes {sizes_tried})"
        if eq["loss"] > 0:
            out.append(f"{head}, the largest batch size B = {eq['largest_batch_size']} reached val_acc "
                       f"{eq['largest_val_acc']:.4f}, {eq['loss']:.4f} below the best, {eq['best_val_acc_any']:.4f} "
                       f"at B = {eq['best_batch_size']}.")
        else:
            out.append(f"{head}, the largest batch size B = {eq['largest_batch_size']} gave the best val_acc, "
                       f"{eq['largest_val_acc']:.4f}.")
    pd = report.get("per_doubling")
    if pd:
        b = pd["batch_size"]
        steps = ", ".join(f"{g:+.4f} ({lo}->{hi})" for g, lo, hi in zip(pd["gain_per_doubling"], b, b[1:]))
        if pd["fell_off_at"] is not None:
            tail = (f"the first interval gaining less than {pd['gain_floor']} per doubling starts at "
                    f"B = {pd['fell_off_at']}")
        else:
            tail = f"every doubling up to B = {b[-1]} gained at least {pd['gain_floor']}"
        out.append(f"Best val_acc per batch size changed per doubling of B by {steps}; {tail}.")
    st = report.get("steps_to_target")
    if st and "fit" in st:
        f = st["fit"]
        out.append(f"Updates to reach val_acc {st['target_val_acc']}: fit S = S_min (1 + B_crit/B) gives S_min = "
                   f"{f['s_min']:.3g} updates and B_crit = {f['b_crit']:.3g} examples; above B = "
                   f"{f['speedup_below_1p5_above']:.3g} each doubling of B saves less than a third of the updates.")
    ln = report.get("loss_noise")
    if ln and "fit_skipped" in ln:
        out.append(f"Loss noise: no slope fitted ({ln['fit_skipped']}).")
    if ln and "slope" in ln:
        trend = "fell" if ln["slope"] < 0 else "rose"
        out.append(f"Loss noise {trend} with batch size with log-log slope {ln['slope']:+.2f} (theory on a fixed "
                   f"model: {ln['theory_slope']}) over {sum(ln['in_fit'])} trials with B <= N/8 = "
                   f"{ln['fit_max_batch_size']:.0f}.")
    gn = report.get("grad_noise")
    if gn:
        c = gn["critical_batch_size"]
        above = ", ".join(map(str, gn["batch_sizes_above"])) or "none"
        out.append(f"Gradient noise scale at the end of training: median {gn['median_final']:.3g} examples (range "
                   f"{gn['min_final']:.3g}-{gn['max_final']:.3g}); critical batch size estimate {c['value']:.3g} "
                   f"({c['source']}); batch sizes tried above it: {above}.")
    gaps = np.array(_col(complete, "final_gen_gap"), float)
    lo, hi = complete[int(np.argmin(gaps))], complete[int(np.argmax(gaps))]
    if len(complete) > 1:
        out.append(f"Generalization gap (train_acc - val_acc) ranged from {gaps.min():+.4f} (B = {lo['batch_size']}, "
                   f"trial {lo['number']}) to {gaps.max():+.4f} (B = {hi['batch_size']}, trial {hi['number']}).")
    else:
        out.append(f"Generalization gap (train_acc - val_acc): {gaps[0]:+.4f}.")
    imp = report.get("importance")
    if imp:
        ranked = sorted(imp["importance"].items(), key=lambda kv: -kv[1])
        out.append(f"By {imp['method']}, the share of {report['study']['objectives'][0]} variance explained: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in ranked) + ".")
    return out


# -- assembling report.json -------------------------------------------------------------------------


def build_report(study: optuna.Study, tracker: Tracker | None = None, command: str | None = None) -> dict:
    """Everything the report shows, as one JSON-ready dict (volatile parts under "volatile")."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id") if tracker else None
    parent = tracker.client.get_run(parent_id) if parent_id else None
    runs = child_runs(tracker, parent_id) if parent else {}
    parent_metrics = {k: v for k, v in parent.data.metrics.items() if k not in TIMING_KEYS} if parent else {}
    objectives = study.user_attrs.get("objectives", ["val_acc"])
    rows = trial_rows(study, runs, objectives)
    complete = _complete(rows)
    states = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "study": {"name": study.study_name, "objectives": objectives, "seed": study.user_attrs.get("seed"),
                  "directions": [d.name.lower() for d in study.directions], "trials_by_state": states,
                  "search_space": _search_space(study), "parent_run_metrics": parent_metrics},
        "trials": rows,
    }
    skipped: dict[str, str] = {}

    # Without MLflow, a batch size that was not searched is unknown: say so rather than "no trial".
    no_rows = ("no complete trial" if not states["COMPLETE"] else
               "no complete trial with a known batch size (not searched, and no MLflow run records it)")

    def put(name: str, value, reason: str) -> None:
        if value:
            report[name] = value
        else:
            skipped[name] = reason if complete else no_rows

    put("accuracy", accuracy_section(complete) if complete else None, no_rows)
    put("equal_budget", equal_budget_comparison(complete) if complete else None,
        "no budget was tried with two batch sizes")
    put("per_doubling", per_doubling(complete), "fewer than 2 batch sizes completed")
    put("loss_noise", loss_noise_section(complete, study.user_attrs.get("n_train", math.inf), parent_metrics),
        "no trial with a loss noise above 0 (a single batch per epoch has none)")
    frozen = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target = next((_num(r.data.params.get("target_val_acc"), float) for r in runs.values()), None)
    put("steps_to_target", steps_section(complete, frozen, target),
        "no trial recorded updates_to_target (set train.target_val_acc in the experiment)")
    gns_curves = {r["number"]: metric_curve(tracker, runs[r["number"]].info.run_id, "grad_noise_scale")
                  for r in complete if r["number"] in runs}
    put("grad_noise", noise_scale_section(complete, gns_curves, report.get("steps_to_target"), parent_metrics),
        "no trial measured the gradient noise scale (train.probe_size = 0)")
    picked = [r for r in pick_across_batch_sizes(complete) if r["number"] in runs] if complete else []
    curves = [_learning_curve(tracker, runs[r["number"]].info.run_id, r) for r in picked]
    put("learning_curves", {"trials": curves} if curves else None, "no complete trial with MLflow metric histories")
    importance, why = importance_section(study, len(frozen))  # fANOVA needs no batch size
    if importance:
        report["importance"] = importance
    else:
        skipped["importance"] = why
    put("history", history_section(study, objectives[0]), no_rows)
    put("top_trials", top_trials(complete) if complete else None, no_rows)
    report["skipped"] = skipped
    report["summary"] = summary_sentences(report, complete)
    report["reproducibility"] = reproducibility(study, tracker, parent, runs, states, command)
    report["volatile"] = volatile(study, tracker, parent, runs, complete)
    return clean(report)


def _search_space(study: optuna.Study) -> dict[str, str]:
    space: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            space.setdefault(name, repr(dist))
    return dict(sorted(space.items()))


def _learning_curve(tracker: Tracker, run_id: str, row: dict) -> dict:
    val, updates = metric_curve(tracker, run_id, "val_acc"), metric_curve(tracker, run_id, "updates")
    at = dict(zip(updates["step"], updates["value"]))
    return {"number": row["number"], "batch_size": row["batch_size"], "lr": row["lr"], "epoch": val["step"],
            "val_acc": val["value"], "updates": [at.get(s) for s in val["step"]]}


def reproducibility(study: optuna.Study, tracker: Tracker | None, parent, runs: dict, states: dict,
                    command: str | None) -> dict:
    """What it takes to run the same study again: command, experiment file, seeds, versions."""
    out: dict[str, Any] = {
        "report_command": command or f"python -m sgdtune.report --study-name {shlex.quote(study.study_name)}",
        "study_seed": study.user_attrs.get("seed"), "trials_by_state": states,
        "trial_seeds": {str(n): _num(r.data.params.get("seed"), int) for n, r in sorted(runs.items())},
    }
    if parent is None:
        return out
    tags, params = parent.data.tags, parent.data.params
    out.update({
        "study_command": tags.get("sgdtune.command"), "device": tags.get("sgdtune.device"),
        "git_commit": tags.get("sgdtune.git_commit"),
        "versions": {k.removeprefix("version."): v for k, v in sorted(params.items()) if k.startswith("version.")},
        "study_params": {k: v for k, v in sorted(params.items()) if not k.startswith("version.")},
    })
    listed = tracker.client.list_artifacts(parent.info.run_id, "experiment")
    files = [a.path for a in listed if a.path.endswith(".toml")]
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            content = Path(tracker.client.download_artifacts(parent.info.run_id, files[0], tmp)).read_bytes()
        sha = hashlib.sha256(content).hexdigest()
        out["experiment_file"] = {"name": Path(files[0]).name, "content": content.decode(), "sha256": sha,
                                  "sha256_recorded": tags.get("sgdtune.experiment_sha256"),
                                  "sha256_matches": sha == tags.get("sgdtune.experiment_sha256")}
    return out


def volatile(study: optuna.Study, tracker: Tracker | None, parent, runs: dict, complete: list[dict]) -> dict:
    """Timings, memory, MLflow ids, locations and dates: what a rerun of the same command changes."""
    trials = study.get_trials(deepcopy=False)
    out: dict[str, Any] = {
        "timings": timings(study, complete),
        "memory_mb": {str(t.number): t.user_attrs["summary"]["peak_mem_mb"] for t in trials
                      if "peak_mem_mb" in t.user_attrs.get("summary", {})},
        "dates": {"generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "trials": {str(t.number): [_iso(t.datetime_start), _iso(t.datetime_complete)]
                             for t in trials}},
    }
    if parent is not None:
        out["mlflow"] = {"tracking_uri": redact_url(tracker.tracking_uri), "experiment_id": tracker.experiment_id,
                         "parent_run_id": parent.info.run_id, "ui_url": ui_url(tracker.experiment_id),
                         "storage": parent.data.tags.get("sgdtune.storage"),
                         "run_ids": {str(n): r.info.run_id for n, r in sorted(runs.items())}}
    return out


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


def clean(value):
    """JSON-ready: numpy -> Python, floats rounded to SIG_DIGITS, NaN/inf -> None, str keys."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.{SIG_DIGITS}g}") if math.isfinite(value) else None
    return value


def to_json(report: dict) -> str:
    return json.dumps(report, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


# -- writing and the command line -----------------------------------------------------------------


def write_report(study_name: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
                 out_dir: str | Path = "reports", *, command: str | None = None) -> Path:
    """Write <out_dir>/<study>/report.json and report.html; log both to the study's parent MLflow run.

    Defaults match the study's: storage mlruns/optuna.journal, tracking sqlite:///<abs>/mlruns/mlflow.db.
    `command` is what the report shows as its own command (default: built from the arguments).
    Returns the report directory. Raises ReportError on bad input.
    """
    storage = storage or default_storage_url(MLRUNS)
    study = load_study(storage, study_name)
    tracker = connect_mlflow(study, tracking_uri or default_tracking_uri(MLRUNS))
    if command is None:
        flags = {"--study-name": study_name, "--storage": storage if storage != default_storage_url(MLRUNS) else None,
                 "--tracking-uri": tracking_uri, "--out": None if str(out_dir) == "reports" else str(out_dir)}
        command = report_command([x for flag, value in flags.items() if value for x in (flag, str(value))])
    text = to_json(build_report(study, tracker, command))
    folder = Path(out_dir) / study.study_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(text)
    (folder / "report.html").write_text(render_html(json.loads(text)))  # drawn from the file's content alone
    if tracker is not None:
        for name in ("report.json", "report.html"):
            tracker.log_artifact(study.user_attrs["mlflow_parent_run_id"], folder / name, "report")
    return folder


def report_command(argv: Sequence[str]) -> str:
    """The command line, any URL password masked."""
    return shlex.join(["python", "-m", "sgdtune.report", *(redact_url(a) for a in argv)])


EPILOG = """examples:
  python -m sgdtune.report                          # the only study in mlruns/optuna.journal
  python -m sgdtune.report --study-name quick       # one of several studies
  python -m sgdtune.report --study-name q8 --out /tmp/reports
  python -m sgdtune.report --storage postgresql://user@host/db --tracking-uri http://host:5000

writes <out>/<study>/report.html (opens offline) and report.json (every number shown; what
varies between runs - timings, MLflow ids, dates - is under "volatile"), and logs both to
the study's parent MLflow run under report/.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgdtune.report", epilog=EPILOG,
                                description="Write a self-contained HTML report (and its JSON) for one study.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-name", help="study to report (default: the only study in the storage)")
    p.add_argument("--storage", help="Optuna storage: journal file or SQLAlchemy URL (default: mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    p.add_argument("--out", default="reports",
                   help="output folder; the report goes in <out>/<study>/ (default: reports)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .console import quiet_libraries

    quiet_libraries()
    try:
        folder = write_report(args.study_name, args.storage, args.tracking_uri, args.out, command=report_command(argv))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {folder / 'report.html'}")
    print(f"      {folder / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
