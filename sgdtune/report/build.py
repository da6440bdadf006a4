"""report.json assembled: the sections (report.sections), the summary, what it takes to
reproduce the study, and under "volatile" what differs between two runs of one command.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ..redact import redact_url
from ..store.run_reader import RunReader, RunRecord
from ..store.tracking import ui_url
from .answer import answer, experiment_file_name
from .inputs import as_number, complete_rows, is_timing, trial_rows
from .mccandlish import mccandlish_section
from .noise_sections import loss_noise_section, noise_scale_section, sharpness_section, steps_section
from .sections import (
    accuracy_section,
    equal_budget_comparison,
    history_section,
    importance_section,
    per_doubling,
    per_octave,
    pick_across_batch_sizes,
    timings,
    top_trials,
)
from .summary import summary_sentences

SCHEMA = "sgdtune.report/1"
SIG_DIGITS = 10  # every float in report.json: enough for equality with the stores, no last-bit noise


def build_report(study: optuna.Study, reader: RunReader | None = None, command: str | None = None,
                 goal: str | None = None) -> dict:
    """Everything the report shows, as one JSON-ready dict (volatile parts under "volatile").

    `reader` reads the study's MLflow runs (stores.open_runs); without it the report
    shows what the Optuna storage alone holds. `goal`: the recommendation's (report.recommend.GOALS;
    default the study's, else fastest)."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id") if reader else None
    parent = reader.find_run(parent_id) if parent_id else None
    runs = reader.child_runs(parent) if parent else {}
    # the recommendation's own metrics depend on step times (recommend.py): not study numbers
    parent_metrics = {k: v for k, v in parent.metrics.items()
                      if not is_timing(k) and not k.startswith("recommended_")} if parent else {}
    objectives = study.user_attrs.get("objectives", ["val_acc"])
    rows = trial_rows(study, runs, objectives)
    complete = complete_rows(rows)
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
    put("per_doubling", per_doubling(complete), "fewer than 2 octaves of batch size completed")
    put("per_octave", per_octave(rows, complete), no_rows)
    n_train = study.user_attrs.get("n_train", math.inf)
    put("loss_noise", loss_noise_section(complete, n_train, parent_metrics),
        "no trial with a loss noise above 0 and B < n_train (a single batch per epoch has none)")
    frozen = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target = next((as_number(r.params.get("target_val_acc"), float) for r in runs.values()), None)
    put("steps_to_target", steps_section(complete, frozen, target),
        "no trial recorded updates_to_target (set train.target_val_acc in the experiment)")
    tags = parent.tags if parent else {}
    tta, recommendation = answer(study, reader, runs, rows, report.get("steps_to_target"), target, goal,
                                 tags.get("sgdtune.command"), tags.get("sgdtune.device"),
                                 experiment_file_name(reader, parent))
    put("time_to_accuracy", tta, no_rows)
    put("recommendation", recommendation, no_rows)
    gns_curves = {r["number"]: reader.metric_history(runs[r["number"]].run_id, "grad_noise_scale")
                  for r in complete if r["number"] in runs}
    put("grad_noise", noise_scale_section(complete, gns_curves, report.get("steps_to_target"), parent_metrics,
                                          n_train),
        "no trial measured the gradient noise scale (train.probe_size = 0)")
    put("mccandlish", mccandlish_section(rows, report.get("steps_to_target"), {
        r["number"]: _metric_paths(reader, runs[r["number"]].run_id, ("b_noise", "eps_max")) for r in complete
        if r["number"] in runs and r["summary"].get("b_noise_at_target") is not None}),
        "no fit of updates to target, or no trial of the fit measured B_noise at the target "
        "(train.b_noise_samples > 0 and train.target_val_acc)")
    sharpness, why = sharpness_section(complete, n_train, {
        r["number"]: _sharpness_path(reader, runs[r["number"]].run_id) for r in complete
        if r["number"] in runs and r["batch_size"] and r["batch_size"] >= (r.get("n_train") or n_train)})
    put("sharpness", sharpness, why)
    picked = [r for r in pick_across_batch_sizes(complete) if r["number"] in runs] if complete else []
    curves = [_learning_curve(reader, runs[r["number"]].run_id, r) for r in picked]
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
    report["reproducibility"] = reproducibility(study, reader, parent, runs, states, command)
    report["volatile"] = volatile(study, reader, parent, runs, complete)
    return clean(report)


def _search_space(study: optuna.Study) -> dict[str, str]:
    """Each param's distribution, as the trials recorded it."""
    space: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            space.setdefault(name, repr(dist))
    return dict(sorted(space.items()))


def _sharpness_path(reader: RunReader, run_id: str) -> dict:
    """The sharpness along a run, against the update count of each epoch that measured it."""
    sharp, updates = reader.metric_history(run_id, "sharpness"), reader.metric_history(run_id, "updates")
    at = dict(zip(updates["step"], updates["value"]))
    pairs = [(at[s], v) for s, v in zip(sharp["step"], sharp["value"]) if s in at]
    return {"updates": [u for u, _ in pairs], "sharpness": [v for _, v in pairs]}


def _metric_paths(reader: RunReader, run_id: str, names: tuple[str, ...]) -> dict:
    """Metrics measured together along a run, against the update count of each epoch that measured
    the first of them (epochs where one is missing, e.g. G^T H G <= 0, hold None for it)."""
    updates = reader.metric_history(run_id, "updates")
    at = dict(zip(updates["step"], updates["value"]))
    histories = [dict(zip(h["step"], h["value"])) for h in (reader.metric_history(run_id, n) for n in names)]
    steps = [s for s in sorted(histories[0]) if s in at]
    return {"updates": [at[s] for s in steps], **{n: [h.get(s) for s in steps] for n, h in zip(names, histories)}}


def _learning_curve(reader: RunReader, run_id: str, row: dict) -> dict:
    val, updates = reader.metric_history(run_id, "val_acc"), reader.metric_history(run_id, "updates")
    at = dict(zip(updates["step"], updates["value"]))
    return {"number": row["number"], "batch_size": row["batch_size"], "lr": row["lr"], "epoch": val["step"],
            "val_acc": val["value"], "updates": [at.get(s) for s in val["step"]]}


def reproducibility(study: optuna.Study, reader: RunReader | None, parent: RunRecord | None,
                    runs: dict[int, RunRecord], states: dict, command: str | None) -> dict:
    """What it takes to run the same study again: command, experiment file, seeds, versions."""
    out: dict[str, Any] = {
        "report_command": command or f"python -m sgdtune.report --study-name {shlex.quote(study.study_name)}",
        "study_seed": study.user_attrs.get("seed"), "trials_by_state": states,
        "trial_seeds": {str(n): as_number(r.params.get("seed"), int) for n, r in sorted(runs.items())},
    }
    if parent is None:
        return out
    tags, params = parent.tags, parent.params
    out.update({
        "study_command": tags.get("sgdtune.command"), "device": tags.get("sgdtune.device"),
        "git_commit": tags.get("sgdtune.git_commit"),
        "versions": {k.removeprefix("version."): v for k, v in sorted(params.items()) if k.startswith("version.")},
        "study_params": {k: v for k, v in sorted(params.items()) if not k.startswith("version.")},
    })
    found = reader.read_artifact(parent.run_id, "experiment", ".toml")
    if found:
        path, content = found
        sha = hashlib.sha256(content).hexdigest()
        out["experiment_file"] = {"name": Path(path).name, "content": content.decode(), "sha256": sha,
                                  "sha256_recorded": tags.get("sgdtune.experiment_sha256"),
                                  "sha256_matches": sha == tags.get("sgdtune.experiment_sha256")}
    return out


def volatile(study: optuna.Study, reader: RunReader | None, parent: RunRecord | None, runs: dict[int, RunRecord],
             complete: list[dict]) -> dict:
    """Timings, memory, the device profile, MLflow ids, locations and dates: what a rerun of the
    same command changes."""
    trials = study.get_trials(deepcopy=False)
    out: dict[str, Any] = {
        "timings": timings(study, complete),
        "memory_mb": {str(t.number): t.user_attrs["summary"]["peak_mem_mb"] for t in trials
                      if "peak_mem_mb" in t.user_attrs.get("summary", {})},
        "dates": {"generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "trials": {str(t.number): [_iso(t.datetime_start), _iso(t.datetime_complete)]
                             for t in trials}},
    }
    if "profile" in study.user_attrs:  # the device's time per update at each B (sgdtune/profile/measure.py)
        out["profile"] = study.user_attrs["profile"]
    if parent is not None:
        out["mlflow"] = {"tracking_uri": redact_url(reader.tracking_uri), "experiment_id": parent.experiment_id,
                         "parent_run_id": parent.run_id, "ui_url": ui_url(parent.experiment_id),
                         "storage": parent.tags.get("sgdtune.storage"),
                         "run_ids": {str(n): r.run_id for n, r in sorted(runs.items())}}
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
    """report.json's text: sorted keys, one key a line, no NaN."""
    return json.dumps(report, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"

