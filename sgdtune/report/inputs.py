"""What the report reads: the study and its MLflow runs (opened and checked by stores.load_study
and stores.open_runs), and from both one row per trial, the table every section draws on.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna

from ..store.run_reader import RunRecord

TIMING_KEYS = ("compute_time_s", "gpu_time_s", "wall_time_s", "noise_probe_time_s", "throughput_eps",
               "gpu_util_mean_pct")
MEMORY_KEYS = ("peak_mem_mb", "gpu_mem_used_max_mb")
PROFILE_PREFIX = "profile_"  # the parent run's device profile metrics (study.record_profile): timings too


def is_timing(key: str) -> bool:
    """A timing metric (any `*_time_s`, throughput, the device profile's `profile_*`), or its
    spread over replicates (`_std`, `_se`): it differs between two runs of one command, so the
    report keeps it under "volatile"."""
    base = key.removesuffix("_std").removesuffix("_se")
    return base in TIMING_KEYS or base.endswith("_time_s") or base.startswith(PROFILE_PREFIX)


def is_memory(key: str) -> bool:
    return key.removesuffix("_std").removesuffix("_se") in MEMORY_KEYS


# -- one row per trial --------------------------------------------------------------------------


def trial_rows(study: optuna.Study, runs: dict[int, RunRecord], objectives: Sequence[str]) -> list[dict]:
    """Each trial's params, objective values and summary, with the MLflow params where it has a run.

    batch_size and lr come from MLflow when present: there `lr` is what the optimizer used
    (after any scaling), while Optuna holds the suggested (base) value. Timings (in the
    summary, or an objective such as compute_time_s) are left to "volatile". n_train and
    n_val (the split's sizes) come from the run's params, else the study's user attributes;
    `replicates` (seeds averaged per configuration) from the run, else 1.
    """
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        p = runs[t.number].params if t.number in runs else {}
        summary = t.user_attrs.get("summary", {})
        budget = p.get("budget") or next((k for k in ("epochs", "updates", "examples") if k in t.params), None)
        size = p.get(budget, t.params.get(budget)) if budget else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "params": dict(t.params),
            "batch_size": as_number(p.get("batch_size", t.params.get("batch_size")), int),
            "lr": as_number(p.get("lr", t.params.get("lr")), float),
            "momentum": as_number(p.get("momentum", t.params.get("momentum")), float),
            "budget": budget,
            "budget_size": as_number(size, int),
            "seed": as_number(p.get("seed"), int),
            "n_train": as_number(p.get("n_train", study.user_attrs.get("n_train")), int),
            "n_val": as_number(p.get("n_val", study.user_attrs.get("n_val")), int),
            "replicates": as_number(p.get("replicates", t.params.get("replicates")), int) or 1,
            # what the sharpness is compared with depends on these (report.noise_sections.sharpness_section)
            "optimizer": p.get("optimizer", t.params.get("optimizer")),
            "weight_decay": as_number(p.get("weight_decay", t.params.get("weight_decay")), float),
            "values": {o: v for o, v in zip(objectives, t.values or []) if not is_timing(o)},
            "summary": {k: v for k, v in summary.items() if not (is_timing(k) or is_memory(k))},
            "fail_reason": t.user_attrs.get("fail_reason"),
        })
    return rows


def as_number(value, kind):
    """A param as MLflow stores it (a string) or as Optuna does, as `kind`; None where absent."""
    return None if value in (None, "None", "") else kind(float(value))


def complete_rows(rows: list[dict]) -> list[dict]:
    """The rows the sections draw: complete, with a known batch size and a final val_acc."""
    return [r for r in rows if r["state"] == "COMPLETE" and r["batch_size"] and "final_val_acc" in r["summary"]]


def column(rows: list[dict], key: str) -> list:
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

