"""Time to accuracy: how long each complete trial, and each batch size, took to reach the
study's goal accuracy, in updates, examples and wall seconds on this device.

The goal is the experiment's target val_acc when it sets one (train.target_val_acc: the
trainer records updates_to_target), else "within noise of the study's best": the first
epoch whose val_acc v satisfies best - v <= 2 sqrt(SE_best^2 + SE_v^2), both SEs binomial
on n_val (docs/science.md, section 8). Seconds are updates x the seconds per update at
that B, from the device profile (study user attribute `profile`) where it timed B, else
the trial's own measured compute time per update (compute_time_s / updates). Both are
given: `seconds` (the rule's) and `measured_seconds` (compute_time_s pro rata of updates).

NumPy only, over plain dicts: no optuna, no mlflow, no torch.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..science.fits import binomial_se

NOISE_SE = 2.0  # within noise: a difference below this many combined standard errors (report/sections.py)


def seconds_per_update(batch_size: int, profile: dict | None) -> tuple[float | None, str | None]:
    """(seconds per update at B, "profile") from the profile's timed sizes: exact where it
    timed B, else log-log interpolated between the two timed sizes around B; (None, None)
    outside its range or without a profile."""
    if not profile or not profile.get("batch_size") or not profile.get("seconds_per_update"):
        return None, None
    pairs = sorted((int(b), float(s)) for b, s in zip(profile["batch_size"], profile["seconds_per_update"])
                   if s is not None and s > 0)
    sizes = np.array([b for b, _ in pairs], float)
    times = np.array([s for _, s in pairs], float)
    if sizes.size == 0 or not sizes[0] <= batch_size <= sizes[-1]:
        return None, None
    if batch_size in sizes:
        return float(times[sizes == batch_size][0]), "profile"
    return float(np.exp(np.interp(np.log(batch_size), np.log(sizes), np.log(times)))), "profile"


def goal_of(rows: list[dict], target: float | None) -> dict:
    """The accuracy every trial is timed to: the target, or the study's best final val_acc
    (its trial, SE and the test that says "within noise" of it)."""
    best = max(rows, key=lambda r: (r["summary"]["final_val_acc"], -r["number"]))
    acc = best["summary"]["final_val_acc"]
    se = binomial_se(acc, best["n_val"]) if best.get("n_val") else None
    if target is not None:
        return {"kind": "target", "val_acc": target, "text": f"val_acc {target:g} (the experiment's target)"}
    return {"kind": "within_noise", "best_val_acc": acc, "best_se": se, "best_number": best["number"],
            "text": f"within noise of the best val_acc, {acc:.4f}",
            "rule": f"first epoch whose val_acc v has best - v <= {NOISE_SE:g} sqrt(SE_best^2 + SE_v^2) "
                    "(binomial SEs on n_val)"}


def reached_at(row: dict, curve: dict | None, goal: dict) -> dict:
    """When one trial first met the goal: {reached, epoch, updates, examples, from}.

    `curve` holds the trial's per-epoch val_acc, updates and examples (MLflow histories);
    without it only the final epoch is known, and a trial within noise at its end counts
    all its updates (an upper bound: `from` says "final")."""
    s = row["summary"]
    if goal["kind"] == "target":
        if s.get("updates_to_target") is None:
            return {"reached": False}
        return {"reached": True, "updates": s["updates_to_target"], "examples": s.get("examples_to_target"),
                "epoch": None, "from": "updates_to_target"}
    n_val = row.get("n_val")

    def within(v: float) -> bool:
        if n_val is None or goal["best_se"] is None:
            return v >= goal["best_val_acc"]
        se = math.hypot(goal["best_se"], binomial_se(v, n_val))
        return goal["best_val_acc"] - v <= NOISE_SE * se

    if curve and curve.get("val_acc"):
        for epoch, v, u, e in zip(curve["epoch"], curve["val_acc"], curve["updates"], curve["examples"]):
            if within(v) and u is not None:
                return {"reached": True, "epoch": epoch, "updates": u, "examples": e, "from": "epochs"}
        return {"reached": False}
    if within(s["final_val_acc"]) and s.get("updates") is not None:
        return {"reached": True, "epoch": None, "updates": s["updates"], "examples": s.get("examples_seen"),
                "from": "final"}
    return {"reached": False}


def time_to_accuracy(rows: list[dict], curves: dict[int, dict], measured: dict[int, float],
                     profile: dict | None, target: float | None, group=None, label=None) -> dict | None:
    """Per complete trial and per batch size: updates, examples and seconds to the goal.

    rows: complete trial rows (report.inputs); curves: trial number -> per-epoch
    {"epoch", "val_acc", "updates", "examples"}; measured: trial number -> compute_time_s.
    group(B) -> the key trials are pooled by (default B itself; an octave on a continuous
    range of B), label(key) -> its name. Per group the trial with the fewest updates to the
    goal is kept (at one B a step costs the same on the profile, so it is also the fastest)."""
    if not rows:
        return None
    goal = goal_of(rows, target)
    trials: dict[str, list] = {k: [] for k in ("number", "batch_size", "lr", "reached", "epoch", "updates",
                                               "examples", "seconds", "measured_seconds", "seconds_per_update",
                                               "time_source")}
    for r in sorted(rows, key=lambda r: r["number"]):
        hit = reached_at(r, curves.get(r["number"]), goal)
        total_updates = r["summary"].get("updates")
        compute = measured.get(r["number"])
        own = compute / total_updates if compute is not None and total_updates else None
        per_update, source = seconds_per_update(r["batch_size"], profile)
        if per_update is None and own is not None:
            per_update, source = own, "measured"
        u = hit.get("updates")
        trials["number"].append(r["number"])
        trials["batch_size"].append(r["batch_size"])
        trials["lr"].append(r["lr"])
        trials["reached"].append(hit["reached"])
        trials["epoch"].append(hit.get("epoch"))
        trials["updates"].append(u)
        trials["examples"].append(hit.get("examples"))
        trials["seconds"].append(u * per_update if u is not None and per_update is not None else None)
        trials["measured_seconds"].append(u * own if u is not None and own is not None else None)
        trials["seconds_per_update"].append(per_update)
        trials["time_source"].append(source)
    sources = set(trials["time_source"])
    return {"goal": goal, "trials": trials,
            "per_batch": per_batch(trials, group or (lambda b: b), label or str),
            "time_source": "profile" if "profile" in sources else "measured" if "measured" in sources else None,
            "time_rule": "seconds = updates to the goal x seconds per update at B, from the device profile "
                         "(log-log interpolated between timed sizes), else the trial's compute_time_s / updates"}


def per_batch(trials: dict[str, list], group, label) -> dict[str, list]:
    """Per group of batch sizes (ascending): trials complete, trials that reached the goal,
    and the one with the fewest updates to it (its B, examples and seconds)."""
    out: dict[str, list[Any]] = {k: [] for k in ("group", "label", "n_complete", "n_reached", "number",
                                                 "batch_size", "epoch", "updates", "examples", "seconds",
                                                 "measured_seconds", "time_source")}
    keys = [group(b) for b in trials["batch_size"]]
    for k in sorted(set(keys)):
        idx = [i for i, x in enumerate(keys) if x == k]
        hit = [i for i in idx if trials["reached"][i]]
        pick = min(hit, key=lambda i: (trials["updates"][i], trials["number"][i])) if hit else None
        out["group"].append(k)
        out["label"].append(label(k))
        out["n_complete"].append(len(idx))
        out["n_reached"].append(len(hit))
        for key in ("number", "batch_size", "epoch", "updates", "examples", "seconds", "measured_seconds",
                    "time_source"):
            out[key].append(trials[key][pick] if pick is not None else None)
    return out
