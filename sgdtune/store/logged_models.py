"""MLflow logged models: a trial's trained network packaged as a pyfunc model (its loader is
sgdtune.saved), found again by its run, and registered in the model registry. Only MLflow is
imported here, lazily; the writes are Tracker's (store/tracking.py), the reads RunReader's
(store/run_reader.py).

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import mlflow_env as mlflow_env  # noqa: F401 - MLflow's environment, before anything imports mlflow


def all_logged_models(client, experiment_id: str) -> list:
    """Every logged model of the experiment that is not deleted (every page)."""
    out, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def ready_model_id(client, run_id: str, experiment_id: str) -> str | None:
    """The id of the READY logged model (the newest) of the run, in its experiment; None when
    it has none."""
    from mlflow.entities import LoggedModelStatus

    found = [m for m in all_logged_models(client, experiment_id)
             if m.source_run_id == run_id and m.status == LoggedModelStatus.READY]
    return max(found, key=lambda m: m.creation_timestamp).model_id if found else None


def register_logged_model(tracking_uri: str, name: str, run_id: str, model_id: str) -> str:
    """Register the run's logged model `model_id` (RunReader.logged_model_id) in the model
    registry under `name` (created when missing); the new version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException:
        client.get_registered_model(name)  # it exists already (else this raises the real error)
    # The model's artifact location as the source: a models:/ URI would be resolved against
    # MLflow's global tracking URI, not this client's store.
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id)
    return str(version.version)


def deleted_meanwhile(error: Exception) -> bool:
    """Whether an MLflow error says a logged model no longer exists (RESOURCE_DOES_NOT_EXIST)."""
    return getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error)


def write_pyfunc_model(local: Path, network: Path, spec: dict, model_id: str, run_id: str) -> None:
    """An MLflow model folder at `local`: MLmodel (pyfunc flavor loaded by sgdtune.saved, the
    float32 tensor signature: inputs (-1, n_features) or images (-1, C, H, W); a classifier's
    output class ids (-1,) int64 with the param `output` = classes | probabilities | logits;
    the input example's metadata), data/<network>, the input example and requirements.txt.
    Written here rather than by mlflow.pyfunc.save_model, whose check of the requirements
    against every installed distribution took 4-6 s of the writer's first model on this
    machine (0.2-0.5 s each after)."""
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    f32 = np.dtype(np.float32)
    model = Model(model_id=model_id, run_id=run_id)
    if spec.get("task", "classification") == "classification":  # class ids by default (saved.PyfuncNetwork)
        outputs = TensorSpec(np.dtype(np.int64), (-1,))
        params = ParamSchema([ParamSpec("output", "string", "classes")])
    else:
        outputs, params = TensorSpec(f32, tuple(spec["outputs"])), None
    model.signature = ModelSignature(inputs=Schema([TensorSpec(f32, tuple(spec["inputs"]))]),
                                     outputs=Schema([outputs]), params=params)
    data = f"data/{network.name}"
    shutil.copytree(network, local / data)
    # The input example as MLflow writes a numpy one: the rows, and the serving request.
    (local / "input_example.json").write_text(json.dumps(spec["example"]))
    (local / "serving_input_example.json").write_text(json.dumps({"inputs": spec["example"]}, indent=2))
    model.saved_input_example_info = {"artifact_path": "input_example.json", "type": "ndarray",
                                      "serving_input_path": "serving_input_example.json"}
    (local / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    mlflow.pyfunc.add_to_model(model, loader_module="sgdtune.saved", data=data)
    model.save(str(local / "MLmodel"))


def requirements() -> list[str]:
    """pip requirements of a logged network, from installed metadata (no import of torch)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "numpy", "sgdtune"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out
