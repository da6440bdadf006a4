"""What a user takes away from a sweep: the trained networks of its best trials and the
record of the data they were trained on, both in the study's MLflow experiment.

Networks. Each COMPLETE trial among the study's best `keep_models` (by the first objective;
ties go to the earlier trial) logs its final weights as an MLflow logged model linked to
its run (the runs table's Models column). The training process writes a folder (`network/`:
the state_dict by torch.save, tensors only, and `architecture.json`) and the writer process
logs it (tracking.Tracker.log_model), so no MLflow call or upload lands in training. When a
trial enters the best `keep_models`, the models of the trials now below them are deleted:
the store holds keep_models models (with several workers, briefly up to one more per
worker, until the next trial enters). A deleted model's files go with `mlflow gc`.
Replicates (`replicates > 1`): the model is replicate 0's network (the trial's value is the
mean over replicates).

The network takes features as `load_data` gives them: standardized with the training
split's mean and standard deviation (data.py), float32, shape (n, n_features).

Datasets. Every trial run and the parent run get one MLflow dataset input per split
("training", "validation", "test": the context tag), named after the dataset, with the
split's digest (sha256 of its feature and target arrays, first 16 hex digits, computed once
per process), the source (the file, the generator and its seed, or a data.factory's
"pkg.module:function" and the seed it was called with) and the split sizes in the profile
(`dataset_records`).

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from .data import DataConfig, Dataset

NETWORK_DIR = "network"  # the folder logged as the pyfunc model's data: data/network/
WEIGHTS_FILE = "weights.pt"
ARCHITECTURE_FILE = "architecture.json"
EXAMPLE_ROWS = 2  # validation rows saved as the logged model's input example
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


# -- which trials keep their network ----------------------------------------------------------


def rank_trials(study: optuna.Study, extra: tuple[int, float] | None = None) -> list[int]:
    """Numbers of the study's COMPLETE trials (and `extra` = (number, first value), a trial
    about to complete), best first by the first objective; ties: the earlier trial first."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    entries = {t.number: t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if extra is not None:
        entries[extra[0]] = extra[1]
    return sorted(entries, key=lambda n: (sign * entries[n], n))


def keep_decision(study: optuna.Study, number: int, value: float, keep: int) -> tuple[bool, list[int]]:
    """(whether trial `number`, completing with first objective `value`, is among the best
    `keep`; the COMPLETE trials ranked below the best `keep`, whose models go)."""
    ranked = rank_trials(study, (number, value))
    return number in ranked[:keep], [n for n in ranked[keep:] if n != number]


# -- the network, written by the training process ---------------------------------------------


def write_network(module: nn.Module, architecture: dict[str, Any]) -> str:
    """A new temporary folder holding `network/weights.pt` (the state_dict on the CPU) and
    `network/architecture.json`; the writer process logs it, then deletes it."""
    import torch

    from .files import atomic_write_all

    folder = Path(tempfile.mkdtemp(prefix="sgdtune-model-"))
    (folder / NETWORK_DIR).mkdir()
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_write_all({folder / NETWORK_DIR / WEIGHTS_FILE: lambda f: torch.save(state, f),
                      folder / NETWORK_DIR / ARCHITECTURE_FILE: json.dumps(architecture, indent=1)})
    return str(folder)


def model_spec(trial_number: int, study_name: str, architecture: dict[str, Any], params: dict[str, Any],
               example: list[list[float]], replicate: int | None) -> dict[str, Any]:
    """What Tracker.log_model needs besides the folder: name, params, tags, signature shapes
    and the input example (plain data, sent through the writer's pipe)."""
    tags = {"sgdtune.study_name": study_name, "sgdtune.trial_number": str(trial_number)}
    if replicate is not None:
        tags["sgdtune.replicate"] = str(replicate)
    return {
        "name": f"trial-{trial_number}",
        "params": {**{k: v for k, v in params.items() if v is not None},
                   "architecture": json.dumps(architecture["model"], sort_keys=True)},
        "tags": tags,
        "inputs": [-1, *(architecture.get("input_shape") or [architecture["n_features"]])],
        "outputs": [-1, architecture["n_outputs"]],
        "task": architecture["task"],
        "example": example,
        "network_dir": NETWORK_DIR,
    }


def architecture_of(model_config: Any, data: Dataset) -> dict[str, Any]:
    """What model.build_model needs to rebuild the network: the [model] section (JSON), the
    number of input features and of outputs (classes; 1 for regression), the task, the
    training split's feature statistics the inputs were standardized with (None: they were
    not), the images' shape (C, H, W) (None: flat features), and, for a factory model, the
    folder its module was imported from (factories.import_root)."""
    from .factories import import_root

    regression = getattr(data, "task", "classification") == "regression"
    mean, std = getattr(data, "feature_mean", None), getattr(data, "feature_std", None)
    shape = getattr(data, "input_shape", None)
    return {"model": model_config.model_dump(mode="json"), "n_features": data.n_features,
            "n_outputs": 1 if regression else data.n_classes, "task": "regression" if regression else "classification",
            "standardize": None if mean is None else {"mean": mean, "std": std},
            "input_shape": None if shape is None else list(shape),
            "import_root": import_root(model_config.factory) if model_config.factory else None}


# -- datasets -----------------------------------------------------------------------------------


def dataset_records(data: Dataset, config: DataConfig, seed: int) -> list[dict[str, Any]]:
    """One plain record per split (training, validation, test when there is one): name,
    digest, source, tensor shapes and the split sizes. Hashes every array once."""
    sizes = {"n_train": data.n_train, "n_val": data.n_val, "n_test": data.n_test}
    if config.path is not None:
        source_type, source = "local", {"uri": Path(config.path).resolve().as_uri()}
    elif config.factory is not None:  # the function's name; the digests say what it gave
        tags = {"generator": config.factory, "factory": config.factory, "seed": str(seed)}
        source_type, source = "code", {"tags": tags}
    else:
        data_config = json.dumps({"dataset": config.dataset, **config.model_dump(mode="json", exclude_defaults=True)},
                                 sort_keys=True)
        tags = {"generator": "sgdtune.data.load_data", "data": data_config, "seed": str(seed)}
        source_type, source = "code", {"tags": tags}
    out = []
    for split, context in CONTEXTS.items():
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x is None or x.shape[0] == 0:
            continue
        out.append({
            "name": data.name,
            "digest": array_digest(x, y),
            "source_type": source_type,
            "source": source,
            "features": {"dtype": str(x.dtype).removeprefix("torch."), "shape": [-1, *x.shape[1:]]},
            "targets": {"dtype": str(y.dtype).removeprefix("torch."), "shape": [-1, *y.shape[1:]]},
            "profile": {"num_rows": int(x.shape[0]), "features_shape": list(x.shape),
                        "targets_shape": list(y.shape), **sizes},
            "context": context,
        })
    return out


def array_digest(*tensors) -> str:
    """sha256 over the tensors' dtypes, shapes and bytes (CPU copies), first 16 hex digits."""
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# -- reading a network back ---------------------------------------------------------------------


def load_model(study_name: str, trial: int | str = "best", *, storage: str | None = None,
               tracking_uri: str | None = None, raw_features: bool = False) -> nn.Module:
    """The trained network of one trial of a study: "best" (by the first objective) or a
    trial number; an nn.Module in eval mode on the CPU. Its input: features as `load_data`
    gives them (standardized with the training split's statistics), float32 (n, n_features),
    or for a network trained on images (n, C, H, W) (flat (n, C*H*W) works too);
    with raw_features, features as they are in the data file: the network is preceded by
    model.Standardize with the training split's mean and std (where the data was standardized).
    Its output: for classification the logits (n, k), one per class (softmax for probabilities,
    argmax for the class id; MLflow's pyfunc model of the same trial returns class ids by
    default); for regression the predictions (n, 1). A factory model is rebuilt from the folder
    its module was imported from (recorded with it), else from sys.path; InputError saying what
    to put on PYTHONPATH when it cannot be imported.

    storage: the Optuna storage (default mlruns/optuna.journal); tracking_uri: the MLflow
    store (default sqlite:///mlruns/mlflow.db). InputError when the study, the trial or its
    logged model does not exist (only the best `keep_models` trials keep one).
    """
    network, _, _, arch = _load(study_name, trial, storage, tracking_uri)
    statistics = arch.get("standardize")  # absent in a model saved before it was recorded
    if not raw_features or statistics is None:
        if raw_features and "standardize" not in arch:
            raise InputError("raw_features", "needs a model saved with its feature statistics (re-run the trial)",
                             "a model saved without them")
        return network
    import torch

    from .model import Standardize

    return torch.nn.Sequential(Standardize(statistics["mean"], statistics["std"]), network).eval()


def save_model_file(study_name: str | None, trial: int | str = "best", out: str | Path | None = None, *,
                    storage: str | None = None, tracking_uri: str | None = None) -> tuple[Path, str]:
    """Write one trial's network's state_dict to `out` (default <study>-trial-<n>.pt); the
    path, and lines saying what was saved and how to load it (`sgdtune model`)."""
    import torch

    from .files import atomic_write, check_target

    if out is not None:
        check_target(out, "--out")  # before the model is fetched
    module, number, name, arch = _load(study_name, trial, storage, tracking_uri)
    if out is None:
        from .names import check_name

        check_name(name, "--study-name")  # it names the file: a name from a shared storage is not trusted
    path = Path(out or f"{name}-trial-{number}.pt")
    shape = arch.get("input_shape")
    network = module[1] if shape else module  # images: the network behind the Flatten
    atomic_write(path, lambda f: torch.save(network.state_dict(), f), field="--out")
    from .model import ModelConfig

    defaults = ModelConfig().model_dump(mode="json")
    model = ", ".join(f"{k}={v!r}" for k, v in arch["model"].items() if v != defaults.get(k))
    text = (f"saved trial {number} of study {name!r} to {path}: the state_dict of "
            f"{_describe(arch)} (tensors only)\n"
            f"load it:  import sgdtune; model = sgdtune.load_model({name!r}, trial={number})\n"
            f"   or:    from sgdtune.model import ModelConfig, build_model; import torch\n"
            f"          model = build_model(ModelConfig({model}), {arch['n_features']}, {arch['n_outputs']}, seed=0"
            f"{f', input_shape={tuple(shape)}' if shape else ''})\n"
            f"          model.load_state_dict(torch.load({str(path)!r}, weights_only=True)); model.eval()\n"
            f"input:    features as sgdtune.load_data gives them (standardized), float32 (n, {arch['n_features']})"
            f"{' flattened from images ' + repr(tuple(shape)) if shape else ''};\n"
            f"          sgdtune.load_model(..., raw_features=True) takes them as in the data file")
    return path, text


def _describe(arch: dict[str, Any]) -> str:
    """The `model` param's text of an architecture: mlp(64-32-10,relu)."""
    from .model import describe_model

    shape = arch.get("input_shape")
    return describe_model(model_config_of(arch), arch["n_features"], arch["n_outputs"],
                          None if shape is None else tuple(shape))


def _load(study_name: str | None, trial: int | str, storage: str | None, tracking_uri: str | None):
    """(network, trial number, study name, architecture) of one trial's logged model."""
    number, run_id, reader, name = _find_trial(study_name, trial, storage, tracking_uri)
    try:
        model_id = reader.logged_model_id(run_id)
        if model_id is None:
            raise InputError("trial", "must be a trial that kept its trained model: only COMPLETE trials among the "
                             "study's best `keep_models` (an experiment-file key, default 3) do",
                             f"trial {number}, which has none (not among the best, or deleted when it dropped out)")
        with tempfile.TemporaryDirectory() as tmp:
            folder = reader.download_model_files(model_id, f"data/{NETWORK_DIR}", tmp)
            arch = json.loads((folder / ARCHITECTURE_FILE).read_text())
            return network_from(folder), number, name, arch
    except (LookupError, FileNotFoundError) as e:  # the store lost what the study recorded
        raise InputError("trial", "must be a trial whose trained model is still in the MLflow store",
                         f"trial {number} of study {name!r}: {e}") from None


def network_from(folder: str | Path) -> nn.Module:
    """The network saved in `folder` (weights.pt and architecture.json), eval mode, CPU;
    the weights are read with torch.load(weights_only=True): tensors, no pickled code.
    A network trained on images takes them shaped (n, C, H, W) or flat (n, C*H*W)."""
    import torch

    from .model import build_model

    folder = Path(folder)
    arch = json.loads((folder / ARCHITECTURE_FILE).read_text())
    shape = arch.get("input_shape")
    module = build_model(model_config_of(arch), arch["n_features"], arch["n_outputs"], seed=0,
                         input_shape=None if shape is None else tuple(shape))
    module.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    if shape is not None:  # images as they come, (n, C, H, W): flattened, as the network was trained
        module = torch.nn.Sequential(torch.nn.Flatten(), module)
    return module.eval()


def model_config_of(arch: dict[str, Any]):
    """The ModelConfig of a saved architecture. A factory model's module is imported from the
    folder recorded with it (import_root) when that folder still exists, else from sys.path;
    InputError saying what to put on the import path when it cannot be imported."""
    from pydantic import ValidationError

    from .factories import on_import_path
    from .model import ModelConfig

    spec, root = arch["model"].get("factory"), arch.get("import_root")
    if spec and root and Path(root).is_dir():
        on_import_path([root])
    try:
        return ModelConfig(**arch["model"])
    except ValidationError as e:
        if not spec:
            raise InputError("model", "must be a model section this version of sgdtune can build",
                             e.errors(include_url=False)[0]["msg"]) from None
        module = spec.partition(":")[0].split(".")[0]  # the top-level package: its folder goes on the path
        where = f"PYTHONPATH={root}" if root else "PYTHONPATH=<the folder that holds it>"
        raise InputError("model.factory", f"must be importable to rebuild the network: put the folder that holds "
                         f"{module!r} on the import path ({where}) or run from that folder",
                         f"{spec!r}, not importable from {Path.cwd()}") from None


def _find_trial(study_name: str | None, trial: int | str, storage: str | None, tracking_uri: str | None):
    """(trial number, its MLflow run id, a RunReader of the store, the study's name) of a
    COMPLETE trial."""
    from optuna.trial import TrialState

    from .store.stores import default_storage_url, load_study, open_runs
    from .store.tracking import default_tracking_uri, quiet_logging

    quiet_logging()
    study = load_study(storage or default_storage_url(), study_name)
    if trial == "best":
        ranked = rank_trials(study)
        if not ranked:
            raise InputError("trial", "'best' needs a COMPLETE trial", f"study {study.study_name!r}, which has none")
        number = ranked[0]
    elif isinstance(trial, int) and not isinstance(trial, bool) and trial >= 0:
        number = trial
    else:
        raise InputError("trial", "must be 'best' or a trial number (an integer >= 0)", repr(trial))
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise InputError("trial", f"must be a trial of study {study.study_name!r} (0..{len(study.trials) - 1})",
                         repr(number))
    if found[0].state != TrialState.COMPLETE:
        raise InputError("trial", "must be a COMPLETE trial (only those keep a trained model)",
                         f"trial {number}, which is {found[0].state.name}")
    reader = open_runs(study, tracking_uri or default_tracking_uri())
    run_id = found[0].user_attrs.get("mlflow_run_id")
    if reader is None or run_id is None:
        raise InputError("study_name", "must be a study run with MLflow tracking (its models live there)",
                         f"{study.study_name!r}, run with --no-tracking")
    return number, run_id, reader, study.study_name


def register_best(study: optuna.Study, name: str, tracking_uri: str) -> tuple[int, str]:
    """Register the best trial's logged model in the MLflow model registry under `name`;
    (trial number, new version)."""
    from .store.logged_models import register_logged_model
    from .store.run_reader import RunReader

    ranked = rank_trials(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    run_id = by_number[ranked[0]].user_attrs.get("mlflow_run_id") if ranked else None
    if run_id is None:
        raise InputError("--register-model", "needs a COMPLETE trial with an MLflow run", "a study with none")
    model_id = RunReader(tracking_uri).logged_model_id(run_id)
    if model_id is None:
        raise InputError("--register-model", "needs the best trial's logged model (keep_models >= 1)",
                         f"trial {ranked[0]}, which has none")
    return ranked[0], register_logged_model(tracking_uri, name, run_id, model_id)


# -- MLflow's pyfunc loader: mlflow.pyfunc.load_model("models:/<id>") --------------------------


OUTPUTS = ("classes", "probabilities", "logits")  # what a classifier's pyfunc predict returns (params "output")


class PyfuncNetwork:
    """MLflow's pyfunc face of a network: predict(features) with features (n, n_features)
    float32, or images (n, C, H, W), as `load_data` gives them (standardized).

    A classifier returns class ids 0..k-1, int64 (n,), by default; params={"output":
    "probabilities"} gives the softmax (n, k), "logits" the network's raw outputs (n, k).
    A regression network returns its predictions, float32 (n, 1)."""

    def __init__(self, module: nn.Module, task: str = "classification"):
        self.module, self.task = module, task

    def predict(self, model_input, params=None):
        import numpy as np
        import torch

        output = (params or {}).get("output", "classes")
        if output not in OUTPUTS:
            raise InputError("params.output", f"must be one of {list(OUTPUTS)}", repr(output))
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            logits = self.module(x)
        if self.task == "regression" or output == "logits":
            return logits.numpy()
        if output == "probabilities":
            return torch.softmax(logits, dim=1).numpy()
        return logits.argmax(dim=1).numpy()


def _load_pyfunc(data_path: str) -> PyfuncNetwork:
    """MLflow calls this (the logged model's loader_module) with the path of data/network."""
    arch = json.loads((Path(data_path) / ARCHITECTURE_FILE).read_text())
    return PyfuncNetwork(network_from(data_path), arch.get("task", "classification"))
