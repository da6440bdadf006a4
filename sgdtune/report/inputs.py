"""What the report reads: the study from its Optuna storage, the study's MLflow runs (through
tracking.RunReader), and from both one row per trial, the table every section draws on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna

from ..errors import InputError
from ..names import check_name
from ..redact import redact_url
from ..stores import open_storage, probe_server
from ..tracking import RunReader, RunRecord, sqlite_path, store_exists

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


# -- finding the study and its runs -----------------------------------------------------------


def load_study(storage: str, study_name: str | None) -> optuna.Study:
    """The named study, or the only one in the storage. Raises InputError naming the flag
    (also for a name that cannot be a folder: reports/<name>/)."""
    if study_name is not None:
        check_name(study_name, "--study-name")
    if "://" not in storage and not Path(storage).is_file():
        raise InputError("--storage", "must be an existing Optuna journal file or a database URL",
                         f"{storage!r} (run `python -m sgdtune.study` first, or pass --storage)")
    if sqlite_path(storage) is not None and not sqlite_path(storage).is_file():
        raise InputError("--storage", "must name an existing SQLite file", repr(storage))
    names = sorted(optuna.get_all_study_names(storage=open_storage(storage)))
    if not names:
        raise InputError("--storage", "must hold a study",
                         f"{redact_url(storage)!r}, which holds none (run `python -m sgdtune.study` first)")
    listed = ", ".join(map(repr, names))
    if study_name is None:
        if len(names) > 1:
            raise InputError("--study-name", f"required when the storage holds several studies; one of {listed}",
                             "none")
        study_name = check_name(names[0], "--study-name")  # a study named by another tool
    if study_name not in names:
        raise InputError("--study-name", f"must be one of {listed}", repr(study_name))
    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def open_runs(study: optuna.Study, tracking_uri: str) -> RunReader | None:
    """A reader of the study's MLflow store; None for a study run with --no-tracking.
    Raises InputError when the store is missing or does not hold the study's parent run
    (nothing is created in a wrong store)."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None:
        return None
    recorded = study.user_attrs.get("tracking_uri")
    hint = f"; the study recorded its runs at {recorded!r}" if recorded and recorded != tracking_uri else ""
    if not store_exists(tracking_uri):
        raise InputError("--tracking-uri", "must name an existing MLflow store", f"{redact_url(tracking_uri)!r}{hint}")
    if tracking_uri.startswith(("http://", "https://")):
        probe_server(tracking_uri)  # a server that does not answer: refused in seconds
    reader = RunReader(tracking_uri)
    if reader.find_run(parent_id) is None:
        raise InputError("--tracking-uri", f"must hold the study's parent run {parent_id}",
                         f"{redact_url(tracking_uri)!r}{hint}")
    return reader


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
            # what the sharpness is compared with depends on these (report.sections.sharpness_section)
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

