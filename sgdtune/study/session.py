"""One study session: how a study runs (RunOptions) and what every process that runs its
trials sets up (Session), the same for run_study (study/run.py) and each worker process
(study/workers.py).

Layer: study.

RunOptions is to a run what config.ExperimentConfig is to an experiment: every option of
run_study, its workers and `python -m sgdtune.study` besides the experiment itself (workers,
heartbeat, stacked cohorts, on_change, tracking, the registered model, the GPUs, ...), checked
once, against the experiment too, before anything is loaded or written. A bad option is one
InputError naming the flag (or keyword), the allowed values and what was given. Worker
processes receive the checked options (WorkerSpec) and do not check them again.

Session is one process's part in a study: its stores' locations, its device and data, its
Optuna storage and study, its MLflow writer and the parent run its trials hang under, and
the one dispatch of its trials, stacked or one by one (cohorts.run_trials). The lead
(run_study) also writes where the study's MLflow runs are (record_location); a worker only
joins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from ..config import ExperimentConfig
from ..data import Dataset, load_data
from ..errors import InputError
from ..gpus import parse_gpus
from ..redact import redact_url
from ..search.strategy import open_study
from ..store.stores import MLRUNS, locations, open_storage
from ..store.writer import BackgroundTracker, RunRef
from ..timing import describe_device, resolve_device
from .cohorts import run_trials, settle
from .identity import ON_CHANGE
from .trial import Objective

FACES = ("api", "cli")  # whose words messages use: run_study's keywords or the command line's flags
# How a message names each option: the command line's flag (the API's messages use it too,
# as they always have), or the keyword where no flag takes it.
FLAGS = {"experiment_path": "experiment", "command": "command", "track": "--no-tracking",
         "show_progress": "--no-progress", "mlruns": "mlruns", "workers": "--workers", "heartbeat": "--heartbeat",
         "batch_trials": "--batch-trials", "on_change": "on_change", "register_model": "--register-model",
         "gpus": "--gpus", "face": "face"}
CHOICES = {"on_change": ON_CHANGE, "face": FACES}
TYPES = {"int_parsing": "must be a whole number", "int_type": "must be a whole number",
         "int_from_float": "must be a whole number", "bool_parsing": "must be true or false",
         "bool_type": "must be true or false", "string_type": "must be text", "path_type": "must be a path"}


class RunOptions(BaseModel):
    """How a study runs, beside what it is: run_study's keywords (docs/usage.md). Build it with
    RunOptions.check(config, ...), which checks the options against the experiment too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment_path: Path | None = None  # the experiment file, logged with the parent run
    command: str | None = None  # the command line, tagged on the parent run (password masked)
    track: bool = True  # MLflow runs; False = the Optuna storage only (--no-tracking)
    show_progress: bool = False
    mlruns: Path = Path(MLRUNS)  # the folder of the default stores and the profile cache
    gpus: tuple[int, ...] | None = None  # GPU slots among the visible ones, taken by the workers in turn
    workers: int = 1  # processes on this machine; None = one per --gpus slot, else 1
    heartbeat: int | None = None  # seconds; RDB storages: a silent trial is failed after 2 intervals
    batch_trials: int = 1  # trials of one batch size trained as one stacked model
    on_change: str = "refuse"  # a stored study with another configuration: "refuse", "fresh" or "extend"
    register_model: str | None = None  # the registry name of the best trial's model, at the end
    face: str = "api"

    @classmethod
    def check(cls, config: ExperimentConfig, **options: Any) -> RunOptions:
        """The options, checked against `config`; InputError naming the first bad one."""
        try:
            return cls.model_validate(options, context={"config": config})
        except ValidationError as e:
            raise _input_error(e) from None

    @field_validator("workers", mode="before")
    @classmethod
    def _one_per_gpu(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:  # the default of the command line (gpus is validated before workers)
            return len(info.data.get("gpus") or ()) or 1
        return value

    @field_validator("workers", "batch_trials")
    @classmethod
    def _at_least_one(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise InputError(FLAGS[info.field_name], "must be >= 1", repr(value))
        return value

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat_seconds(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise InputError("--heartbeat", "must be >= 1 (seconds)", repr(value))
        return value

    @field_validator("on_change", "face")
    @classmethod
    def _one_of(cls, value: str, info: ValidationInfo) -> str:
        allowed = CHOICES[info.field_name]
        if value not in allowed:
            raise InputError(FLAGS[info.field_name], f"must be one of {', '.join(map(repr, allowed))}", repr(value))
        return value

    @field_validator("register_model")
    @classmethod
    def _a_model_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise InputError("--register-model", "must be a non-empty model name", repr(value))
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_indices(cls, value: Any) -> Any:
        if isinstance(value, str):  # `--gpus 0,2,3` as the command line gives it
            return tuple(parse_gpus(value))
        indices = isinstance(value, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                           for i in value)
        if value is not None and not indices:
            raise InputError("--gpus", "must list GPU indices (integers >= 0), e.g. [0, 2, 3]", repr(value))
        return value

    @model_validator(mode="after")
    def _fit_the_experiment(self, info: ValidationInfo) -> RunOptions:
        config = (info.context or {}).get("config")
        if config is not None:
            _check_cohorts(config, self.batch_trials)
            _check_registration(self.register_model, self.track, config)
            _check_gpus(self.gpus, config)
        return self


def _input_error(error: ValidationError) -> InputError:
    """The first problem as one InputError: a rule's own, or a wrong type named by its flag."""
    first = error.errors(include_url=False)[0]
    raised = first.get("ctx", {}).get("error")
    if isinstance(raised, InputError):
        return raised
    field = ".".join(map(str, first["loc"])) or "options"
    name = FLAGS.get(str(first["loc"][0]), field) if first["loc"] else field
    if first["type"] == "extra_forbidden":
        return InputError(name, f"unknown option; allowed: {', '.join(RunOptions.model_fields)}")
    rule = TYPES.get(first["type"], first["msg"][0].lower() + first["msg"][1:])
    return InputError(name, rule, repr(first.get("input")))


def _check_cohorts(config: ExperimentConfig, batch_trials: int) -> None:
    """Stacked cohorts train each trial once, as one member of a stacked classification model:
    replicates (trained one after another, study/trial.py), regression and the grid sampler's
    fixed points cannot be part of one (cohorts.optimize_batched)."""
    if batch_trials == 1:
        return
    if config.data.task == "regression":
        raise InputError("--batch-trials", "stacks classification models only; train a regression study one trial "
                         "at a time (drop --batch-trials)",
                         f"--batch-trials {batch_trials} with data.task = 'regression'")
    if config.train.loss == "mse":
        raise InputError("--batch-trials", "stacks cross-entropy classifiers only; train a study with train.loss = "
                         "'mse' one trial at a time (drop --batch-trials)",
                         f"--batch-trials {batch_trials} with train.loss = 'mse'")
    if config.sampler.name == "grid":
        raise InputError("--batch-trials", "cannot be used with the grid sampler (it fixes every value itself, so a "
                         "cohort cannot share a batch size, and it ends a study only inside study.optimize); use "
                         "sampler.name = 'random' or 'tpe' with --batch-trials, or drop the flag",
                         f"--batch-trials {batch_trials} with sampler.name = 'grid'")
    stratified = [name for name, rng in config.search.items() if rng.stratify]
    if stratified:  # followers take the leader's value from the queue: values would be skipped
        raise InputError("--batch-trials", f"cannot be combined with search.{stratified[0]}.stratify (a cohort shares "
                         f"one {stratified[0]}, so the round-robin would skip values); drop one of the two",
                         f"--batch-trials {batch_trials} with search.{stratified[0]}.stratify = true")
    if config.train.precision != "fp32":
        raise InputError("--batch-trials", "stacks fp32 training only (the stacked steppers have no autocast); "
                         "drop --batch-trials or set train.precision = 'fp32'",
                         f"--batch-trials {batch_trials} with train.precision = {config.train.precision!r}")
    if config.replicates > 1:
        raise InputError("--batch-trials", "cannot be combined with --replicates > 1 (replicates are trained one "
                         "after another, not stacked); drop one of the two",
                         f"--batch-trials {batch_trials} with --replicates {config.replicates}")


def _check_registration(name: str | None, track: bool, config: ExperimentConfig) -> None:
    """--register-model needs MLflow tracking and kept models."""
    if name is None:
        return
    if not track:
        raise InputError("--register-model", "needs MLflow tracking (the models live there)", "--no-tracking")
    if config.keep_models < 1:
        raise InputError("--register-model", "needs keep_models >= 1 (no trial keeps its network otherwise)",
                         f"keep_models = {config.keep_models}")


def _check_gpus(gpus: tuple[int, ...] | None, config: ExperimentConfig) -> None:
    """--gpus needs a CUDA device (the machine's GPUs are counted where the workers are
    placed: place_on_gpus)."""
    if gpus is None:
        return
    if not (config.device.startswith("cuda") or config.device == "auto"):
        raise InputError("--gpus", "needs --device cuda (or auto on a machine with CUDA)", f"device {config.device!r}")


def place_on_gpus(config: ExperimentConfig, options: RunOptions) -> tuple[ExperimentConfig, tuple[str, ...]]:
    """The config this process trains with, and each worker's GPU (CUDA_VISIBLE_DEVICES), for
    `--gpus` and for `--device cuda --workers N` (one GPU per worker, gpus.py)."""
    workers, gpus = options.workers, options.gpus
    cuda = config.device.startswith("cuda") or (config.device == "auto" and gpus is not None)
    if not cuda or (workers == 1 and gpus is None):
        return config, ()
    import torch

    from ..gpus import visible_gpus, worker_gpus

    if not torch.cuda.is_available():
        raise InputError("--gpus" if gpus is not None else "device", "needs CUDA; this machine has none",
                         repr(config.device))
    visible = visible_gpus(torch.cuda.device_count())
    if workers == 1:  # one process: the chosen GPU is its device, no environment to change
        if len(gpus) != 1:
            raise InputError("--gpus", f"lists {len(gpus)} GPU slots for 1 worker; add --workers {len(gpus)} "
                             "or list one GPU", ",".join(map(str, gpus)))
        worker_gpus(1, visible, gpus)  # the index is checked
        return config.model_copy(update={"device": f"cuda:{gpus[0]}"}), ()
    return config.model_copy(update={"device": "cuda"}), tuple(worker_gpus(workers, visible, gpus))


@dataclass
class Session:
    """One process's part in a study, set up step by step in the order its caller needs
    (run_study checks both stores before it writes; a worker starts its writer first, so that
    MLflow's imports run beside its own)."""

    config: ExperimentConfig
    options: RunOptions
    storage_url: str
    tracking_uri: str
    device: Any  # torch.device
    data: Dataset | None = None
    storage: optuna.storages.BaseStorage | None = None
    study: optuna.Study | None = None
    tracker: BackgroundTracker | None = None
    parent_run: RunRef | str | None = None  # the lead's RunRef, a worker's run id
    datasets: list[dict] | None = None  # saved.dataset_records of `data`, hashed once

    @classmethod
    def prepare(cls, config: ExperimentConfig, options: RunOptions) -> Session:
        """Where the study's stores are and the device it trains on; nothing opened yet."""
        storage_url, tracking_uri = locations(config, options.mlruns)
        return cls(config, options, storage_url, tracking_uri, resolve_device(config.device))

    @property
    def tracking(self) -> str | None:
        """The MLflow store the session writes to, None without tracking."""
        return self.tracking_uri if self.options.track else None

    def load_data(self) -> Dataset:
        self.data = load_data(self.config.data, self.config.seed, self.device)
        return self.data

    def open_storage(self) -> optuna.storages.BaseStorage:
        """The Optuna storage, with heartbeats if asked (a stale trial's MLflow run is ended too)."""
        self.storage = open_storage(self.storage_url, self.options.heartbeat, self.tracking)
        return self.storage

    def open_study(self, worker: int = 0, join: int = 0) -> optuna.Study:
        """The study, its sampler seeded from the study seed, the worker index (0: the lead) and the join."""
        self.study = open_study(self.config, self.storage, worker=worker, join=join)
        return self.study

    def start_writer(self, artifact_location: str | None = None) -> BackgroundTracker | None:
        """MLflow's writer process (store/writer.py), when tracking."""
        if self.options.track:
            self.tracker = BackgroundTracker(self.tracking_uri, self.config.name, artifact_location)
        return self.tracker

    def record_location(self) -> None:
        """The study's user attributes that say where its MLflow runs are (password masked):
        the next process, the report and the UI find the parent run through them."""
        self.study.set_user_attr("mlflow_experiment_id", self.tracker.experiment_id)
        self.study.set_user_attr("mlflow_parent_run_id", self.parent_run.id)
        self.study.set_user_attr("tracking_uri", redact_url(self.tracker.tracking_uri))

    def run_trials(self, n_trials: int, progress=None, cores: int | None = None) -> Objective:
        """Up to n_trials trials in this process, stacked or one by one (cohorts.run_trials),
        and with heartbeats in the lead, staying until other processes' trials settle."""
        objective = Objective(self.config, self.data, self.tracker, self.parent_run, describe_device(self.device),
                              progress, cores=cores, datasets=self.datasets)
        run_trials(self.study, objective, n_trials, self.config, self.options.batch_trials)
        return objective

    def settle(self, objective: Objective) -> None:
        """With heartbeats: stay while other processes' trials run, so that a dead one's trial
        is run again here (cohorts.settle)."""
        if self.options.heartbeat is not None:
            settle(self.study, objective, self.config, self.options.heartbeat, self.options.batch_trials)
