"""The study's answer, gathered from its stores: time to accuracy per trial and per batch
size (report/time_to_accuracy.py) and the recommendation (report/recommend.py).

build.py puts both in report.json; the study command prints the recommendation after its
closing table (study_answer) and both record it on the parent MLflow run.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import shlex

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from ..store.piped_reads import PipedReader
from ..store.run_reader import RunReader, RunRecord
from .inputs import as_number, complete_rows, trial_rows
from .noise_sections import steps_section
from .recommend import DEFAULT_GOAL, recommend
from .sections import best_rows_per_batch, octave, val_acc_se
from .time_to_accuracy import time_to_accuracy


def is_grid(study: optuna.Study, sizes: list[int]) -> bool:
    """Whether B takes a few set values (choices, a stratified grid of powers of two, a fixed
    B): then trials pool per B; on a continuous range per octave of B, since neighbouring
    sampled values (8, 9) differ by noise alone (report/sections.py, per_doubling)."""
    dists = [t.distributions.get("batch_size") for t in study.get_trials(deepcopy=False)]
    if any(isinstance(d, CategoricalDistribution) for d in dists) or not any(dists):
        return True
    return all(b > 0 and b & (b - 1) == 0 for b in sizes)


def grouping(grid: bool):
    """(group, label): B itself on a grid, else its octave 2^k..2^(k+1)-1."""
    if grid:
        return (lambda b: b), str
    return octave, (lambda k: f"{2 ** k}-{2 ** (k + 1) - 1}")


def epoch_curves(reader: RunReader | None, runs: dict[int, RunRecord], complete: list[dict]) -> dict[int, dict]:
    """Per complete trial with an MLflow run: its per-epoch val_acc, updates and examples_seen."""
    out = {}
    for r in complete:
        if reader is None or r["number"] not in runs:
            continue
        run_id = runs[r["number"]].run_id
        val = reader.metric_history(run_id, "val_acc")
        at = {k: dict(zip(*reader.metric_history(run_id, k).values())) for k in ("updates", "examples_seen")}
        out[r["number"]] = {"epoch": val["step"], "val_acc": val["value"],
                            "updates": [at["updates"].get(s) for s in val["step"]],
                            "examples": [at["examples_seen"].get(s) for s in val["step"]]}
    return out


def measured_times(study: optuna.Study) -> dict[int, float]:
    """compute_time_s of each trial that recorded one (a timing: report.json keeps it volatile)."""
    return {t.number: t.user_attrs["summary"]["compute_time_s"] for t in study.get_trials(deepcopy=False)
            if "compute_time_s" in t.user_attrs.get("summary", {})}


def lr_search(study: optuna.Study) -> dict | None:
    """The lr search range (low, high, log) as the trials recorded it; None when lr was not searched."""
    for t in study.get_trials(deepcopy=False):
        d = t.distributions.get("lr")
        if d is not None and hasattr(d, "low"):
            return {"low": d.low, "high": d.high, "log": bool(getattr(d, "log", False))}
    return None


def study_args(command: str | None, experiment_file: str | None = None) -> list[str] | None:
    """The study command's arguments after the program (`python -m sgdtune.study X.toml ...`,
    `sgdtune study X.toml ...`), less those the next command sets itself; a command that ran
    the default experiment gets its file (experiments/<experiment_file>) named."""
    if not command:
        return None
    try:
        words = shlex.split(command)
    except ValueError:  # not a command line a shell would read: no next command from it
        return None
    for i, w in enumerate(words):
        if w in ("sgdtune.study", "study") or w.endswith("/sgdtune.study"):
            words = words[i + 1:]
            break
    else:
        return None
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("--n-trials", "--goal"):
            skip = True
        elif w.startswith(("--n-trials=", "--goal=")) or w in ("--fresh", "--extend", "--report"):
            continue
        else:
            out.append(w)
    if experiment_file and not any(w.endswith(".toml") for w in out):
        out.insert(0, f"experiments/{experiment_file}")
    return out


def batches_table(complete: list[dict], tta: dict, group, label) -> dict[str, list]:
    """recommend()'s per-group lists: the best trial of each group and the one that reached
    the goal accuracy first (time_to_accuracy's per_batch)."""
    by_number = {r["number"]: r for r in complete}
    best = {}
    for r in best_rows_per_batch(complete):
        k = group(r["batch_size"])
        if k not in best or r["summary"]["final_val_acc"] > best[k]["summary"]["final_val_acc"]:
            best[k] = r
    pb = tta["per_batch"]
    out: dict[str, list] = {k: [] for k in ("label", "n_complete", "best_val_acc", "best_val_acc_se", "best_number",
                                            "best_batch_size", "best_lr", "best_lr_base", "best_budget", "number",
                                            "batch_size", "lr", "budget", "epoch", "updates", "examples", "seconds",
                                            "time_source")}
    for j, k in enumerate(pb["group"]):
        b, fast = best[k], by_number.get(pb["number"][j])
        out["label"].append(label(k))
        out["n_complete"].append(pb["n_complete"][j])
        out["best_val_acc"].append(b["summary"]["final_val_acc"])
        out["best_val_acc_se"].append(val_acc_se(b)[0])
        out["best_number"].append(b["number"])
        out["best_batch_size"].append(b["batch_size"])
        out["best_lr"].append(b["lr"])
        out["best_lr_base"].append(as_number(b["params"].get("lr"), float))
        out["best_budget"].append(budget_text(b))
        out["lr"].append(fast and fast["lr"])
        out["budget"].append(fast and budget_text(fast))
        for key in ("number", "batch_size", "epoch", "updates", "examples", "seconds", "time_source"):
            out[key].append(pb[key][j])
    return out


def budget_text(row: dict) -> str | None:
    return f"{row['budget']} = {row['budget_size']}" if row.get("budget") else None


def answer(study: optuna.Study, reader: RunReader | None, runs: dict[int, RunRecord], rows: list[dict],
           steps: dict | None, target: float | None, goal: str | None = None,
           command: str | None = None, device: str | None = None,
           experiment_file: str | None = None) -> tuple[dict | None, dict | None]:
    """(time_to_accuracy, recommendation) of report.json; (None, None) with no complete trial.
    goal: one of recommend.GOALS (default: the study's user attribute `goal`, else fastest)."""
    complete = complete_rows(rows)
    if not complete:
        return None, None
    goal = goal or study.user_attrs.get("goal") or DEFAULT_GOAL
    profile = study.user_attrs.get("profile")
    grid = is_grid(study, sorted({r["batch_size"] for r in complete}))
    group, label = grouping(grid)
    tta = time_to_accuracy(complete, epoch_curves(reader, runs, complete), measured_times(study), profile,
                           target, group, label)
    tta["grouped_by"] = "batch size" if grid else "octave of batch size (B searched on a continuous range)"
    tried = {group(r["batch_size"]) for r in rows if r["batch_size"]}
    untried = [label(k) for k in sorted(tried - set(tta["per_batch"]["group"]))]
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
                   for t in study.get_trials(deepcopy=False))
    rec = recommend(batches_table(complete, tta, group, label), goal, goal_text=tta["goal"]["text"],
                    lr_search=lr_search(study), critical=(steps or {}).get("fit"), profile=profile,
                    device=device or (profile or {}).get("device"), n_finished=finished,
                    study_args=study_args(command, experiment_file), untried=untried)
    return tta, rec


def study_answer(study: optuna.Study, tracking_uri: str | None, goal: str | None = None) -> dict | None:
    """The recommendation of a study from its stores (the study command's closing lines)."""
    reader = parent = None
    runs: dict[int, RunRecord] = {}
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if tracking_uri and parent_id:
        reader = PipedReader(tracking_uri)  # through the writer process, which has MLflow imported
        parent = reader.find_run(parent_id)
        runs = reader.child_runs(parent) if parent else {}
    objectives = study.user_attrs.get("objectives", ["val_acc"])
    rows = trial_rows(study, runs, objectives)
    target = next((as_number(r.params.get("target_val_acc"), float) for r in runs.values()), None)
    frozen = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    steps = steps_section(complete_rows(rows), frozen, target)
    tags = parent.tags if parent else {}
    return answer(study, reader, runs, rows, steps, target, goal, tags.get("sgdtune.command"),
                  tags.get("sgdtune.device"), experiment_file_name(reader, parent))[1]


def experiment_file_name(reader: RunReader | None, parent: RunRecord | None) -> str | None:
    """The name of the experiment file the parent run recorded (its artifact experiment/*.toml)."""
    found = reader.read_artifact(parent.run_id, "experiment", ".toml") if reader and parent else None
    return found and found[0].rsplit("/", 1)[-1]

