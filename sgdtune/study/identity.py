"""A study's identity: the configuration its trials compute with, recorded in the Optuna
study's user attributes (canonical JSON and its sha256), and the check that a study is
resumed with the configuration it was started with.

What a trial computes depends on data, model, train, search, objectives, seed, sampler,
pruner and replicates; not on the study's name, its length (n_trials, timeout_s), where it
is stored or the device it runs on. A changed configuration is refused before anything is
written, unless the caller asks to start the study afresh or to extend it knowingly.

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import optuna
from pydantic import ValidationError

from ..config import ExperimentConfig
from ..errors import InputError

# Fields that leave what a trial computes unchanged (TrainConfig's own model and seed are
# never used: a trial takes the experiment's model and a derived seed, config.py). Like the
# device, the thread count is how a trial runs: it may change the last bits of a float sum.
# The device profile is timed before the trials and changes none of them.
IGNORED: dict[str, Any] = {"name": True, "description": True, "n_trials": True, "timeout_s": True,
                           "storage": True, "tracking_uri": True, "device": True, "threads": True,
                           "keep_models": True, "profile": True, "train": {"model", "seed"}}
ON_CHANGE = ("refuse", "fresh", "extend")

# Optuna study user attributes (docs/records.md).
SHA_ATTR = "config_sha256"
JSON_ATTR = "config_json"
CHANGES_ATTR = "config_changes"  # [{"from_trial": n, "config_sha256": ..., "changes": [...]}], --extend
ADOPTED_ATTR = "config_recorded_at_trial"  # a study from before configurations were recorded

_MISSING = object()


def config_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The fields that change what a trial computes, as JSON values; a [train] value that is
    also searched is left out (each trial's suggestion replaces it)."""
    out = config.model_dump(mode="json", exclude=IGNORED)
    for key in config.search:
        out["train"].pop(key, None)
    return out


def canonical_json(config: ExperimentConfig) -> str:
    return json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))


def fingerprint(config: ExperimentConfig) -> str:
    """sha256 (hex) of the canonical JSON of the configuration."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """One line per dotted key whose value differs: 'train.momentum: 0.9 -> 0.0'."""
    lines = []
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {_show(a)} -> {_show(b)}")
    return lines


def config_diff(recorded_json: str, config: ExperimentConfig) -> list[str]:
    """What differs between a recorded configuration and this one. The record is read through
    today's schema first, so a field added since it was written counts as its default."""
    old = json.loads(recorded_json)
    try:
        old = config_dict(ExperimentConfig.model_validate(old))
    except ValidationError:  # a field removed since, or a rule added: compare as recorded
        pass
    return diff(old, config_dict(config))


def _check_none_alive(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """--fresh is refused while a process runs the study (reclaim.live_processes: this host's
    processes, and other hosts' that send heartbeats); the writers of dead ones are given
    time to make their last writes, so that the runs they leave are ended as replaced."""
    from .reclaim import live_processes, wait_for_writer

    live = live_processes(study, storage)
    if live:
        raise InputError("--fresh", f"cannot replace study {study.study_name!r} while a process runs it (its trials "
                         "and runs would be pulled from under it); wait until it ends, or stop it (Ctrl-C), then run "
                         "this again", ", ".join(live))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        wait_for_writer(trial)


def _show(value: Any) -> str:
    return "(none)" if value is _MISSING else json.dumps(value)


@dataclass
class Identity:
    """The outcome of the check, to record once the study is open."""

    config: ExperimentConfig
    action: str  # "new" | "resume" | "adopt" | "extend" | "fresh"
    n_before: int = 0  # trials the study had (for "fresh": the deleted study's)
    changes: list[str] = field(default_factory=list)

    def record(self, study: optuna.Study) -> None:
        """Write the configuration (and, on --extend, what changed from which trial) to the study."""
        sha = fingerprint(self.config)
        if self.action == "adopt":
            study.set_user_attr(ADOPTED_ATTR, self.n_before)
        if self.action == "extend":
            entry = {"from_trial": self.n_before, "config_sha256": sha, "changes": self.changes}
            study.set_user_attr(CHANGES_ATTR, [*study.user_attrs.get(CHANGES_ATTR, []), entry])
        if study.user_attrs.get(SHA_ATTR) != sha:
            study.set_user_attr(JSON_ATTR, canonical_json(self.config))
            study.set_user_attr(SHA_ATTR, sha)

    def parent_tags(self, study: optuna.Study) -> dict[str, str]:
        """Tags of the study's parent MLflow run: the fingerprint, and the changes of --extend."""
        tags = {"sgdtune.config_sha256": fingerprint(self.config)}
        history = study.user_attrs.get(CHANGES_ATTR, [])
        if history:
            text = " | ".join(f"from trial {e['from_trial']}: " + ", ".join(e["changes"]) for e in history)
            tags["sgdtune.config_changes"] = text if len(text) <= 5000 else text[:4997] + "..."
        return tags


# How each face names the choices: the command line's flags, or run_study's keywords.
WORDS = {
    "cli": {"name": "--study-name", "fresh": "--fresh", "extend": "--extend"},
    "api": {"name": "name= (load_experiment(..., name=...))", "fresh": "on_change='fresh'",
            "extend": "on_change='extend'"},
}


def check(config: ExperimentConfig, storage: optuna.storages.BaseStorage, on_change: str = "refuse",
          face: str = "api") -> Identity:
    """Compare the configuration with the one the stored study (if any) was started with.

    Raises InputError, before anything is written, when they differ and on_change is
    "refuse". "fresh" deletes the stored study (whatever its configuration; its MLflow runs
    stay), unless a process still runs it (InputError: replacing it would pull the study
    from under that process); "extend" continues it with this configuration. A study with
    no recorded configuration is adopted as it is. `face` ("api" or "cli") says whose words
    the messages use: run_study's keywords or the command line's flags. Call it under the
    start lock (store/startlock.py), with the record that follows: the check and the record are one
    step.
    """
    words = WORDS[face]  # on_change and face are checked with the run's options (session.RunOptions)
    if not any(s.study_name == config.name for s in storage.get_all_studies()):
        return Identity(config, "new")
    study = optuna.load_study(study_name=config.name, storage=storage)
    n_before = len(study.get_trials(deepcopy=False))
    if on_change == "fresh":
        _check_none_alive(study, storage)
        optuna.delete_study(study_name=config.name, storage=storage)
        print(f"{words['fresh']}: deleted study {config.name!r} ({n_before} trials) from the Optuna storage; "
              f"its MLflow runs stay in experiment {config.name!r}", file=sys.stderr)
        return Identity(config, "fresh", n_before)
    recorded = study.user_attrs.get(JSON_ATTR)
    if recorded is None:
        return Identity(config, "adopt", n_before)
    changes = config_diff(recorded, config)
    if not changes:
        return Identity(config, "resume", n_before)
    shown = ", ".join(changes[:8]) + (f", and {len(changes) - 8} more" if len(changes) > 8 else "")
    if on_change == "refuse":
        raise InputError(
            f"study {config.name!r}",
            f"has {n_before} trials run with another configuration; to keep it, give this one a new "
            f"{words['name']}; to replace it, use {words['fresh']} (deletes the study, its MLflow runs "
            f"stay); to continue it with this configuration, use {words['extend']}",
            shown,
        )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in config.directions]:
        raise InputError(words["extend"], f"cannot change a study's objectives; give a new {words['name']} or use "
                         f"{words['fresh']}", shown)
    print(f"{words['extend']}: study {config.name!r} continues from trial {n_before} with {shown}", file=sys.stderr)
    return Identity(config, "extend", n_before, changes)
