"""Reading an MLflow store, for the report, the UI and `load_model`: plain `RunRecord`s out,
nothing created or changed in the store (no experiment, no run, no change of the SQLite
journal mode). The writes are Tracker's (store/tracking.py); importing that module first sets
MLflow's environment (telemetry off, retries bounded).

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..redact import redact_url
from . import mlflow_env as mlflow_env  # noqa: F401 - MLflow's environment, before anything imports mlflow
from .logged_models import ready_model_id
from .tracking import sqlite_path


def store_exists(tracking_uri: str) -> bool:
    """False for a SQLite store whose file is missing (opening it would create an empty one);
    True otherwise, since a server's or a database's existence shows only when it is asked."""
    path = sqlite_path(tracking_uri)
    return path is None or path.is_file()


def holds_run(tracking_uri: str, run_id: str, reader: Callable[[str], RunReader] | None = None) -> bool:
    """Whether the store holds the run; False for a missing or empty (0-byte) SQLite file,
    which is not opened: MLflow would create its tables in it. `reader`: the class that reads
    (RunReader, or store/piped_reads.py's PipedReader)."""
    path = sqlite_path(tracking_uri)
    if path is not None:
        if not path.is_file() or path.stat().st_size == 0:
            return False
    return (reader or RunReader)(tracking_uri).find_run(run_id) is not None


DATABASE_FAILED = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "BAD_REQUEST")  # the store's codes for a SQL error


def unreadable_store(tracking_uri: str, error: Exception) -> InputError:
    """The one line for an MLflow store that cannot be opened or read (`database disk image
    is malformed`, `file is not a database`): the flag, the store, the first line of why."""
    text = str(error).strip()
    why = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".removeprefix("MlflowException: ")
    return InputError("--tracking-uri", "must be an MLflow store that can be read (a damaged database file: restore "
                      "it from a copy, or use another store with a new --study-name)",
                      f"{redact_url(tracking_uri)!r} ({redact_url(why)})")


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data: ids, params, latest metric values, tags."""

    run_id: str
    experiment_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.experiment_id, dict(run.data.params), dict(run.data.metrics),
                     dict(run.data.tags))


class RunReader:
    """Reads of one MLflow store. Unlike Tracker, it creates nothing: no experiment, no run,
    no change of the SQLite journal mode. Check `store_exists` first: MLflow opens a
    missing SQLite file by creating it."""

    def __init__(self, tracking_uri: str):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        try:  # MLflow opens a database store here, and reads its tables
            self.client = MlflowClient(tracking_uri=tracking_uri)
        except Exception as e:  # noqa: BLE001 - a damaged file, a refused login, a missing driver: one line
            raise unreadable_store(tracking_uri, e) from None

    def find_run(self, run_id: str) -> RunRecord | None:
        """The run, or None when the store does not hold it. InputError when the store cannot
        be read (a damaged database file)."""
        from mlflow.exceptions import MlflowException

        try:
            return _record(self.client.get_run(run_id))
        except MlflowException as e:
            if getattr(e, "error_code", None) in DATABASE_FAILED:  # MLflow's wrapping of a SQL error
                raise unreadable_store(self.tracking_uri, e) from None
            return None

    def child_runs(self, parent: RunRecord) -> dict[int, RunRecord]:
        """The trial runs under a study's parent run, by trial number (every page of the search)."""
        runs, token = {}, None
        while True:
            page = self.client.search_runs([parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'",
                                           max_results=1000, page_token=token)
            for run in page:
                runs[int(run.data.tags["sgdtune.trial_number"])] = _record(run)
            token = page.token
            if not token:
                return runs

    def metric_history(self, run_id: str, key: str) -> dict[str, list]:
        """{"step": [...], "value": [...]} of one per-epoch metric, by step; where a step was
        logged twice, its last value by timestamp."""
        history = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        by_step = {m.step: m.value for m in history}
        steps = sorted(by_step)
        return {"step": steps, "value": [by_step[s] for s in steps]}

    def read_artifact(self, run_id: str, folder: str, suffix: str) -> tuple[str, bytes] | None:
        """(path, content) of the first artifact in `folder` whose name ends with `suffix`;
        None when there is none."""
        found = [a.path for a in self.client.list_artifacts(run_id, folder) if a.path.endswith(suffix)]
        if not found:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return found[0], Path(self.client.download_artifacts(run_id, found[0], tmp)).read_bytes()

    def logged_model_id(self, run_id: str) -> str | None:
        """The id of the run's READY logged model (the newest), None when it has none;
        LookupError when the run itself is gone from the store."""
        run = self.find_run(run_id)  # a damaged store: InputError, as for every read
        if run is None:
            raise LookupError(f"its MLflow run {run_id} is not in the store (deleted, and removed by `mlflow gc`?)")
        return ready_model_id(self.client, run_id, run.experiment_id)

    def download_model_files(self, model_id: str, path: str, dst: str) -> Path:
        """Download the logged model's artifact `path` into `dst`; the local path. LookupError
        when its files are gone (`mlflow gc` removes a deleted model's)."""
        from mlflow.artifacts import download_artifacts

        location = self.client.get_logged_model(model_id).artifact_location.rstrip("/")
        try:
            return Path(download_artifacts(artifact_uri=f"{location}/{path}", dst_path=dst,
                                           tracking_uri=self.tracking_uri))
        except Exception as e:  # noqa: BLE001 - MLflow's error for missing files depends on the artifact store
            raise LookupError(f"the files of its logged model {model_id} are not at {redact_url(location)} "
                              f"(removed by `mlflow gc`, or the artifact folder moved): {type(e).__name__}") from None

    def experiments_with_runs(self) -> list[tuple[str, str]]:
        """(experiment id, name) of every experiment that holds a run, by id."""
        found = [(e.experiment_id, e.name) for e in self.client.search_experiments()]
        with_runs = [(i, n) for i, n in found if self.client.search_runs([i], max_results=1)]
        return sorted(with_runs, key=lambda e: (len(e[0]), e[0]))  # ids are digit strings: "2" before "10"
