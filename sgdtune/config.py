"""The experiment schema: a TOML file plus overrides, validated once, frozen.

Every rule lives in a pydantic field or validator, so a bad file and a bad flag get the
same message: the field, what is allowed, and what was given.

Layer: config (the experiment schema, validated once; docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import DataConfig
from .errors import InputError
from .factories import experiment_import_path, on_import_path
from .model import ModelConfig
from .names import NAME_RULE, name_problem
from .trainer import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_EXPERIMENT = "batch_tradeoff.toml"
SEARCHABLE = {
    "batch_size": int,
    "lr": float,
    "epochs": int,
    "updates": int,
    "examples": int,
    "momentum": float,
    "weight_decay": float,
    "warmup_epochs": float,
}
OBJECTIVES = {"val_acc": "maximize", "compute_time_s": "minimize"}
STRATIFIED_SAMPLERS = ("tpe", "random", "gp")  # those that model from a study's trials alone (space.StratifiedSampler)


# Stores MLflow 3 opens for a tracking URI (its file store is refused), beside any plugin's.
BUILTIN_TRACKING_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                                      "databricks-uc", "uc"})


def tracking_schemes() -> frozenset[str]:
    """URI schemes MLflow can track to here: built in, and registered by installed plugins
    (read from package metadata, without importing MLflow)."""
    from importlib.metadata import entry_points

    return BUILTIN_TRACKING_SCHEMES | {ep.name for ep in entry_points(group="mlflow.tracking_store")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamRange(_Strict):
    """One searched parameter: a range (low..high, optionally log or stepped) or choices."""

    low: float | None = Field(default=None, description="lowest value, inclusive, in the searched key's unit")
    high: float | None = Field(default=None, description="highest value, inclusive; needs low <= high")
    log: bool = Field(default=False, description="sample on a log scale; needs low > 0 and no step")
    step: float | None = Field(default=None, gt=0, description="spacing of the values from low to high "
                               "(the grid sampler needs a step or choices)")
    choices: tuple[float, ...] | None = Field(default=None, min_length=1,
                                              description="the values to pick from, in place of low and high")
    stratify: bool = Field(default=False, description="spread trials over the powers of two in [low, high] (log "
                           "ranges): each takes the value with the fewest complete, pruned or running trials (ties "
                           "round-robin by trial number), so a diverged trial's value gets another; the sampler and "
                           "the median pruner see the trials at that value only, and the pruner spares them until 2 "
                           "there are complete")

    @model_validator(mode="after")
    def _range_or_choices(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low > self.high:
            raise ValueError(f"low must be <= high; got low={self.low}, high={self.high} (a reversed range)")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("a log range cannot have a step")
        if self.stratify and not (self.log and 2 ** math.ceil(math.log2(self.low)) * 2 <= self.high):
            raise ValueError(f"stratify needs a log range holding at least 2 powers of two; got low={self.low}, "
                             f"high={self.high}, log={self.log}")
        return self

    def values(self) -> tuple[float, ...]:
        """The two ends, or every choice: what must each be a valid TrainConfig value."""
        return self.choices if self.choices is not None else (self.low, self.high)


class SamplerConfig(_Strict):
    name: Literal["tpe", "random", "grid", "cmaes", "gp"] = Field(
        default="tpe", description="Optuna sampler, seeded from the study seed; tpe is multivariate; grid "
        "needs choices or a step in every [search.X]")
    n_startup_trials: int = Field(default=10, ge=0, description="random trials before modelling (tpe, gp, cmaes)")


class PrunerConfig(_Strict):
    name: Literal["median", "hyperband", "none"] = Field(
        default="median", description="stops a trial early on its val_acc at epoch ends (single-objective "
        "studies only; a study of 2 objectives never prunes); hyperband's smallest resource: n_warmup_steps epochs")
    n_startup_trials: int = Field(default=5, ge=0, description="complete trials before the median pruner "
                                  "acts (per value of a stratified parameter, and there at least 2)")
    n_warmup_steps: int = Field(default=2, ge=0, description="epochs before a trial may be pruned")


class ExperimentConfig(_Strict):
    """One study: what to train, what to search, how to search and where to store it."""

    name: str = Field(default="batch_tradeoff", description="study name = MLflow experiment name")
    description: str = Field(default="", description="free text for people; the file itself is logged with "
                             "the study's parent run")
    seed: int = Field(default=0, ge=0, description="study seed: seeds the sampler; each trial's seed derives from "
                      "it and the trial number")
    n_trials: int = Field(default=20, ge=1, description="finished trials to reach (complete, pruned, or failed by "
                          "divergence); a resumed study counts those it has")
    timeout_s: float | None = Field(default=None, gt=0, description="seconds after which no new trial starts; "
                                    "unset = no limit")
    replicates: int = Field(default=1, ge=1, description="seeds each sampled configuration is trained with")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N | mps")
    threads: int | Literal["auto"] = Field(
        default="auto", description='torch intra-op threads per trial: "auto" = from the step\'s work and this '
        "process's cores, not the machine's load (sgdtune/threads.py), or a count >= 1")
    objectives: tuple[Literal["val_acc", "compute_time_s"], ...] = Field(
        default=("val_acc",), min_length=1, max_length=2,
        description="val_acc (maximized; R² for regression) and/or compute_time_s (seconds of training steps, "
        "minimized); two = a Pareto front, and no pruning")
    storage: str | None = Field(default=None, description="Optuna storage URL; default: mlruns/optuna.journal")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI with a scheme MLflow "
                                     "knows (sqlite:///path, http://host:port, ...); default: sqlite:///mlruns/mlflow.db")
    keep_models: int = Field(
        default=3, ge=0,
        description="trained networks kept per study (a count of trials): each COMPLETE trial among the best "
        "keep_models by the first objective logs its weights as an MLflow logged model, and a trial that drops "
        "out of them has its model deleted; 0 = none")
    profile: bool = Field(default=True, description="time one update of the model at each batch size on this device "
                          "before the first trial (sgdtune/profile/measure.py; cached under mlruns/profiles/); "
                          "false = skip")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    search: dict[str, ParamRange] = Field(default_factory=dict)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()

    @field_validator("name")
    @classmethod
    def _name_is_not_a_path(cls, name: str) -> str:
        if name_problem(name):
            raise ValueError(f"{NAME_RULE}; got {name!r}")
        return name

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
            raise ValueError(f"must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'; got {device!r}")
        return device

    @field_validator("threads", mode="before")
    @classmethod
    def _auto_or_count(cls, threads: Any) -> Any:
        if threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            return threads
        raise ValueError(f'must be "auto" or a whole count >= 1; got {threads!r}')

    @field_validator("tracking_uri")
    @classmethod
    def _known_tracking_scheme(cls, uri: str | None) -> str | None:
        # Checked here, before anything is written: MLflow itself opens the store in the
        # writer process, and only a trial later would its error arrive.
        if uri is None:
            return uri
        scheme = uri.partition("://")[0].split("+")[0] if "://" in uri else None
        known = tracking_schemes()
        if scheme not in known:
            raise ValueError(f"must be an MLflow tracking URI with a scheme among {sorted(known)} "
                             f"(e.g. sqlite:///mlruns/mlflow.db, http://host:5000); got {uri!r}")
        return uri

    @model_validator(mode="after")
    def _search_fits_the_trainer(self) -> ExperimentConfig:
        for key, rng in self.search.items():
            if key not in SEARCHABLE:
                raise ValueError(f"search.{key}: cannot be searched; searchable: {', '.join(SEARCHABLE)}")
            if self.sampler.name == "grid" and rng.choices is None and rng.step is None:
                raise ValueError(f"search.{key}: the grid sampler needs choices (or a step); got a continuous range")
            for value in rng.values():
                cast = SEARCHABLE[key](value)
                if SEARCHABLE[key] is int and cast != value:
                    raise ValueError(f"search.{key}: must be whole numbers; got {value}")
                _validate_as(TrainConfig, {**self.train.model_dump(exclude={"model"}), key: cast}, f"search.{key}")
        stratified = [k for k, rng in self.search.items() if rng.stratify]
        if len(stratified) > 1 or (stratified and self.sampler.name not in STRATIFIED_SAMPLERS):
            raise ValueError(f"search.{stratified[0]}.stratify: works for one parameter with sampler "
                             f"{' | '.join(STRATIFIED_SAMPLERS)}; got {stratified} with {self.sampler.name!r}")
        if self.data.task == "regression" and self.train.loss == "cross_entropy":
            raise ValueError("train.loss: regression trains on 'mse' only; got 'cross_entropy'")
        budget = self.train.budget
        if getattr(self.train, budget) is None and budget not in self.search:
            raise ValueError(f"train.{budget}: must be set (or searched) when budget = {budget!r}; got nothing")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: must not repeat; got {list(self.objectives)}")
        return self

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    def trial_config(self, params: dict[str, Any], seed: int) -> TrainConfig:
        """The TrainConfig of one trial: the fixed [train] values, the suggested ones, its seed."""
        fixed = self.train.model_dump(exclude={"model", "seed"})
        return TrainConfig(**{**fixed, **params}, seed=seed, model=self.model)


def _validate_as(model: type[BaseModel], values: dict, where: str):
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, prefix=where.rsplit(".", 1)[0])) from None


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: 'field: what is allowed; got X'."""
    lines, seen = [], set()
    for err in error.errors(include_url=False):
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        if err["loc"][:1] in seen:  # one message per field: the first says what matters
            continue
        seen.add(err["loc"][:1])
        kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(loc.rsplit(".", 1)[0] if "." in loc else "")
            rule = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif kind == "literal_error":
            rule = f"must be one of {ctx.get('expected')}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
            limit = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
            rule = f"must be {op} {limit}"
        elif kind == "value_error":
            # Model-level rules already name their field ("search.lr: ..."); field-level ones don't.
            msg = str(ctx.get("error", err["msg"]))
            names_field = msg.split(" ", 1)[0].endswith(":")
            lines.append(msg if names_field or not loc else f"{loc}: {msg}")
            continue
        elif kind in STRICT_TYPES and isinstance(given, str):
            rule = f"must be {STRICT_TYPES[kind]}, written without quotes"
        else:
            rule = err["msg"][0].lower() + err["msg"][1:]
        lines.append(f"{loc}: {rule}; got {given!r}")
    return "\n".join(lines)


STRICT_TYPES = {"int_type": "a whole number", "float_type": "a number", "bool_type": "true or false"}


def _allowed_keys(section: str) -> list[str]:
    model: Any = ExperimentConfig
    for part in filter(None, section.split(".")):
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return sorted(ParamRange.model_fields) if model is not ParamRange else []
        model = field.annotation
        if part == "search":
            model = ParamRange
    names = sorted(getattr(model, "model_fields", {}))
    return [n for n in names if not (model is TrainConfig and n in ("model", "seed"))]


def default_experiment_path() -> Path:
    """experiments/batch_tradeoff.toml in the working directory, else the package's own copy
    (sgdtune/experiments/, package data: in a checkout a link to the top-level experiments/,
    in an installed wheel a folder)."""
    here = Path("experiments") / DEFAULT_EXPERIMENT
    if here.is_file():
        return here
    return Path(__file__).resolve().parent / "experiments" / DEFAULT_EXPERIMENT


def load_experiment(path: str | Path | None = None, **overrides: Any) -> ExperimentConfig:
    """Read a TOML experiment, apply overrides (dotted keys reach into tables; None = keep), validate.

    The experiment file's folder and the working directory go on the import path first, so a
    factory ("pkg.module:function") beside the file or in the working directory is found by
    every command and by this function alike (factories.py).

    Raises InputError naming the field, the rule and the value given.
    """
    path = Path(path) if path is not None else default_experiment_path()
    if not path.is_file():
        raise InputError("experiment", "must be an existing TOML file", repr(str(path)))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8, whatever the locale
    except UnicodeDecodeError as e:  # a binary file, or text in another encoding
        raise InputError("experiment", "must be a TOML file, UTF-8 text",
                         f"{str(path)!r} (byte {e.start} is not UTF-8: {e.object[e.start:e.start + 1]!r})") from None
    except OSError as e:
        raise InputError("experiment", "must be a TOML file that can be read",
                         f"{str(path)!r} ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(str(path), f"must be valid TOML ({e})") from None
    if "train" in raw and isinstance(raw["train"], dict) and ("seed" in raw["train"] or "model" in raw["train"]):
        bad = "seed" if "seed" in raw["train"] else "model"
        raise InputError(f"{path}: train.{bad}", f"unknown key; set it at the top level ({bad} = ...) or in [{bad}]")
    written = _paths_from_the_file(raw, path)
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(raw, key, value)
    _written_paths_exist(raw, written, path)
    _refuse_searched_overrides(overrides, raw.get("search"))
    on_import_path(experiment_import_path(path))
    try:
        # Strict: a string where a number belongs (n_trials = "24") is refused, not converted.
        return ExperimentConfig.model_validate(_as_schema_types(raw), strict=True)
    except ValidationError as e:
        raise InputError(str(path), format_validation_error(e)) from None


def _as_schema_types(raw: Any, key: str = "") -> Any:
    """TOML's arrays as the schema's tuples and data.path as a Path, the two conversions strict
    validation would otherwise refuse; every other value is validated as written."""
    if isinstance(raw, dict):
        return {k: _as_schema_types(v, f"{key}.{k}".lstrip(".")) for k, v in raw.items()}
    if isinstance(raw, list):
        return tuple(_as_schema_types(v) for v in raw)
    if key == "data.path" and isinstance(raw, str):
        return Path(raw)
    return raw


PATH_KEYS = (("data", "path"),)  # files the experiment reads (storage, tracking_uri: from the working directory)


def _paths_from_the_file(raw: dict, path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """A relative path written in the file is relative to the file's folder (`~` expanded); an
    absolute one is kept. Overrides (--set, keyword arguments) come later: they stay relative to
    the working directory, where the person typing them is. Returns {key: (as written, resolved)}
    for the relative ones."""
    written = {}
    for table, key in PATH_KEYS:
        value = raw.get(table, {}).get(key) if isinstance(raw.get(table), dict) else None
        if isinstance(value, str) and value:
            given = Path(value).expanduser()
            raw[table][key] = str(given if given.is_absolute() else (path.parent / given).resolve())
            if raw[table][key] != value:
                written[table, key] = (value, raw[table][key])
    return written


def _written_paths_exist(raw: dict, written: dict[tuple[str, str], tuple[str, str]], path: Path) -> None:
    """A relative data.path from the file that names no file: say what was written and where it
    was looked for (the schema's own message would show only the latter)."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if ("data", "path") not in written or data.get("dataset") not in ("csv", "npz"):
        return
    given, resolved = written["data", "path"]
    if data.get("path") == resolved and not Path(resolved).is_file():
        raise InputError(f"{path}: data.path", "must be an existing file",
                         f"{given!r} (no such file: {resolved}; a relative path in an experiment file is "
                         "relative to the file's folder)")


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    """raw["train"]["momentum"] = value for key "train.momentum"."""
    *tables, last = key.split(".")
    for name in tables:
        child = raw.setdefault(name, {})
        if not isinstance(child, dict):
            raise InputError(key, f"{name!r} is a value, not a table", f"{key}={value!r}")
        raw = child
    raw[last] = value


def _refuse_searched_overrides(overrides: dict[str, Any], search: Any) -> None:
    """An override of a [train] value that is searched would be replaced by every trial's
    suggestion (trial_config: a searched key is the TrainConfig field of the same name)."""
    for key, value in overrides.items():
        table, _, name = key.partition(".")
        if table == "train" and isinstance(search, dict) and name in search and value is not None:
            raise InputError(key, f"is searched ([search.{name}]), so each trial's suggestion would replace it; "
                             f"change [search.{name}] instead (e.g. --set search.{name}.high=...), or remove "
                             f"[search.{name}] from the experiment to fix the value", repr(value))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set a.b=VALUE` pairs as {"a.b": value}, each VALUE parsed as TOML (so 0.5, "sgd",
    [1, 2] all work; a bare word is taken as a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError("--set", "must look like KEY=VALUE (e.g. train.momentum=0.5)", repr(item))
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out
