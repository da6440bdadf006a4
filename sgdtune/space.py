"""The experiment's search space as Optuna suggestions; nothing else."""

from __future__ import annotations

from typing import Any

import optuna

from .config import SEARCHABLE, ParamRange


def suggest(trial: optuna.Trial, search: dict[str, ParamRange]) -> dict[str, Any]:
    """One value per searched parameter, typed as the trainer expects (int or float)."""
    params: dict[str, Any] = {}
    for name, rng in search.items():
        kind = SEARCHABLE[name]
        if rng.choices is not None:
            params[name] = kind(trial.suggest_categorical(name, [kind(c) for c in rng.choices]))
        elif kind is int:
            step = int(rng.step) if rng.step else 1
            params[name] = trial.suggest_int(name, int(rng.low), int(rng.high), step=step, log=rng.log)
        else:
            params[name] = trial.suggest_float(name, rng.low, rng.high, step=rng.step, log=rng.log)
    return params


def grid(search: dict[str, ParamRange]) -> dict[str, list[Any]]:
    """Every value of every parameter, for Optuna's GridSampler (choices, or stepped ranges)."""
    out: dict[str, list[Any]] = {}
    for name, rng in search.items():
        kind = SEARCHABLE[name]
        if rng.choices is not None:
            out[name] = [kind(c) for c in rng.choices]
        else:
            count = int(round((rng.high - rng.low) / rng.step)) + 1
            out[name] = [kind(rng.low + i * rng.step) for i in range(count)]
    return out
