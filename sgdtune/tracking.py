"""MLflow, the one module that talks to it (writer.py only replays Tracker's calls in a
child process): writes through `Tracker`, reads through `RunReader`, one client each with
explicit run ids (no global active run).

A study is an MLflow experiment with one parent run; each trial is a nested child run named
`trial-<n>`. Names and tags: docs/records.md.

Each write to a SQLite store costs 10-40 ms of ORM work, often more than a small trial's
epoch. So a trial's params and epochs are buffered: written at most every FLUSH_EVERY_S
while it runs (the UI still follows a long trial), the rest together with the summary in
one call when the trial ends: a short trial costs three writes (create, log, terminate).
A study does not call Tracker itself: writer.py runs it in a separate process, so that none
of this time is spent in the training process.

`RunReader` serves the report and the UI: plain `RunRecord`s out, nothing created or
changed in the store.
"""

from __future__ import annotations

import os

# MLflow 3 reports usage by default; sgdtune talks only to the stores it was pointed at.
# A user who wants telemetry sets MLFLOW_DISABLE_TELEMETRY=false / DO_NOT_TRACK=0 first.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A progress bar for one small artifact (the experiment file, the report) is noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A tracking server that stops answering mid-study: an error within about a minute, not
# MLflow's default of 7 retries of 120 s each (stores.probe_server refuses one down at start).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402
from urllib.parse import unquote, urlsplit  # noqa: E402

from . import runs_view  # noqa: E402
from .errors import InputError  # noqa: E402
from .redact import redact_url  # noqa: E402 - the masking every writer here applies

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param

# mlflow is imported where it is used: importing it takes 1-2 s, which `--no-tracking`
# runs, `--help` and the URL helpers below (sgdtune.ui) need not pay.

PARENT_RUN_ROLE = "study"
REPLACED_ROLE = "replaced-study"  # a parent run whose Optuna study was deleted by --fresh; its runs stay
STATUS_OF_STATE = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
FLUSH_EVERY_S = 2.0  # a running trial's epochs reach the store at least this often
RECOVERED_NOTE = ("ended on a later start: its end was lost (a killed writer or a store that refused writes); "
                  "summary metrics from the Optuna trial, epochs not yet written are missing")


# Stores MLflow 3 opens for a tracking URI (its file store is refused), beside any plugin's.
BUILTIN_TRACKING_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                                      "databricks-uc", "uc"})


def tracking_schemes() -> frozenset[str]:
    """URI schemes MLflow can track to here: built in, and registered by installed plugins
    (read from package metadata, without importing MLflow)."""
    from importlib.metadata import entry_points

    return BUILTIN_TRACKING_SCHEMES | {ep.name for ep in entry_points(group="mlflow.tracking_store")}


def default_tracking_uri(root: Path | str = "mlruns") -> str:
    """SQLite store under `root` (absolute, so it does not depend on a later cwd)."""
    return sqlite_uri(Path(root).resolve() / "mlflow.db")


URL_SPECIAL = "%?#"  # what SQLAlchemy's URL parser reads in a path: quoted, and only these


def sqlite_uri(path: Path | str) -> str:
    """sqlite:///PATH, with '%', '?' and '#' in the path percent-quoted: SQLAlchemy (under MLflow
    and Optuna) reads a '?' as the start of the URL's query and decodes '%41' as 'A', so a folder
    named 'w_q?x=1' or 'w_pc%41' would send the database elsewhere. Such a path is given with
    the driver named (sqlite+pysqlite, the same store): MLflow creates the folder of a
    'sqlite:///' path without decoding it (mlflow/store/db/utils.py, _make_parent_dirs_if_sqlite),
    which would leave an empty 'w_q%3Fx=1' beside the working folder."""
    text = str(path)
    if not any(c in text for c in URL_SPECIAL):
        return f"sqlite:///{text}"
    return "sqlite+pysqlite:///" + "".join(f"%{ord(c):02X}" if c in URL_SPECIAL else c for c in text)


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:///PATH URL (query cut off, percent-decoded, as SQLAlchemy reads
    it: sqlalchemy/engine/url.py); None for another scheme or an in-memory database."""
    scheme, sep, rest = uri.partition(":///")
    if not sep or scheme.lower().split("+")[0] != "sqlite":
        return None
    database = unquote(rest.partition("?")[0])
    return Path(database) if database and database != ":memory:" else None


def default_artifact_location(root: Path | str = "mlruns") -> str:
    return (Path(root).resolve() / "artifacts").as_uri()


def quiet_logging() -> None:
    """MLflow's and its SQL migrations' INFO lines off (warnings stay): call before the first
    read or write, in a process whose console shows something else."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def use_write_ahead_log(tracking_uri: str) -> None:
    """Switch a SQLite store to WAL journaling (a persistent property of the file): a commit
    costs fewer syncs, and readers (the UI, other workers) no longer block writers."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    import sqlite3

    with sqlite3.connect(path, timeout=30) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def ui_url(experiment_id: str, port: int = 5000, host: str = "127.0.0.1", base: str | None = None) -> str:
    """The runs table (not MLflow 3's GenAI view) of one experiment, in sgdtune's view
    (runs_view.py); on `base` (a tracking server's URL) or http://host:port."""
    if base is None:
        base = f"http://{host}:{port}"
    else:  # a browser gets no credentials from a URL printed on a console
        parts = urlsplit(base)
        base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    return base + runs_view.ui_path(experiment_id)


def save_runs_view(client, experiment_id: str, tags: dict[str, str] | None = None, budget: str | None = None) -> None:
    """Write the experiment tag that holds sgdtune's runs-table view, unless `tags` (the
    experiment's, when already read) hold it as it is; `budget` (epochs, updates, examples) names
    the parallel-coordinates chart's budget axis (default: keep the one written, else epochs)."""
    if not runs_view.is_current((tags or {}).get(runs_view.TAG), budget):
        client.set_experiment_tag(experiment_id, runs_view.TAG, runs_view.tag_value(_now_ms(), budget or "epochs"))


def save_runs_views(tracking_uri: str, experiment_ids: list[str]) -> None:
    """save_runs_view for experiments made before sgdtune wrote it (`sgdtune ui` opens them)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for experiment_id in experiment_ids:
        save_runs_view(client, experiment_id, client.get_experiment(experiment_id).tags)


SCHEMA_ATTEMPTS = 6  # tries at opening a database store while other processes create its tables


@contextmanager
def _schema_guard(tracking_uri: str) -> Iterator[None]:
    """MLflow creates (or migrates) a store's tables when it first opens it; two processes
    doing it at once on one SQLite file fail ("table ... already exists", "Online migration
    expected to match one row"). A SQLite store is opened under an flock beside its file
    (startlock.file_lock); a server's store is the server's to create."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    from .startlock import file_lock

    with file_lock(Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0]), tracking_uri):
        yield


def _client(tracking_uri: str):
    """An MlflowClient; a database store whose tables another process is creating at this
    moment (PostgreSQL, MySQL: no file to lock) is opened again, at different moments."""
    import random

    from mlflow import MlflowClient

    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            return MlflowClient(tracking_uri=tracking_uri)
        except Exception as e:
            text = str(e).lower()
            racing = "already exists" in text or "duplicate" in text or "expected to match one row" in text
            if attempt == SCHEMA_ATTEMPTS or not racing or tracking_uri.startswith(("sqlite:", "http")):
                raise
            time.sleep(random.uniform(0.2, 0.6) * attempt)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """The MLflow side of one study."""

    def __init__(self, tracking_uri: str, study_name: str, artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        with _schema_guard(tracking_uri):
            self.client = _client(tracking_uri)
            self.experiment_id = self._experiment(study_name, artifact_location)
            use_write_ahead_log(tracking_uri)
        self._unwritten: dict[str, list[Metric]] = {}  # run id -> epochs not yet in the store
        self._unwritten_params: dict[str, list[Param]] = {}  # run id -> its params, until the first write
        self._written_at: dict[str, float] = {}  # run id -> time.monotonic() of its last write

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            save_runs_view(self.client, found.experiment_id, found.tags)  # a study made before the view
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location,
                                                 tags={runs_view.TAG: runs_view.tag_value(_now_ms())})
        except Exception:
            found = self.client.get_experiment_by_name(name)  # another worker made it first
            if found is None:
                raise
            return found.experiment_id

    # -- the study's parent run -------------------------------------------------------------

    def find_parent_run(self) -> str | None:
        from mlflow.entities import ViewType

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`sgdtune.role` = '{PARENT_RUN_ROLE}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def find_trial_run(self, trial_number: int) -> str | None:
        """The RUNNING run of a trial whose process died before it recorded the run's id: a
        child of the study's parent run, never a run of a study `--fresh` replaced (same
        trial numbers, another parent)."""
        parent = self.find_parent_run()
        if parent is None:
            return None
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`sgdtune.trial_number` = '{trial_number}' and attributes.status = 'RUNNING' "
                          f"and tags.mlflow.parentRunId = '{parent}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def start_parent_run(self, tags: dict[str, str], params: dict[str, object], replace: bool = False) -> str:
        """The study's parent run: found again on resume, else created.

        Two processes that start a new study at the same moment may both create one: each
        then keeps the earliest and the one that lost deletes its own, so both log under
        the same parent. With `replace` (the study was started afresh), a parent found keeps
        its runs under the role REPLACED_ROLE and a new one is created.
        """
        from mlflow.entities import RunTag

        run_id = self.find_parent_run()
        if run_id is not None and replace:
            self.client.set_tag(run_id, "sgdtune.role", REPLACED_ROLE)
            self._end_replaced(run_id)
            run_id = None
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study_name,
                tags={"sgdtune.role": PARENT_RUN_ROLE, "sgdtune.study_name": self.study_name, **tags},
            )
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=_params(params))
            earliest = self.find_parent_run()
            if earliest != run_id:
                self.client.delete_run(run_id)
                run_id = earliest
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return run_id

    def _end_replaced(self, parent_run_id: str) -> None:
        """End the runs a replaced study left RUNNING (its processes were killed: `--fresh`
        waits for live ones to end), FAILED with the reason, and its parent KILLED: no later
        study's trial of the same number ends them as its own."""
        from mlflow.entities import RunStatus

        reason = "its study was replaced (--fresh) after the process running this trial died"
        running = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([self.experiment_id], filter_string=running, max_results=5000):
            self.fail_stale_run(run.info.run_id, reason)
        if self.client.get_run(parent_run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            self.client.set_terminated(parent_run_id, status="KILLED")

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_parent_run(self, run_id: str, metrics: dict[str, float], status: str = "FINISHED") -> None:
        self.flush()  # epochs of any trial run that never reached end_trial_run
        self.client.log_batch(run_id, metrics=_metrics(metrics, step=0))
        self.client.set_terminated(run_id, status=status)

    def save_view(self, budget: str) -> None:
        """The experiment's saved runs view, its parallel-coordinates chart on this budget."""
        save_runs_view(self.client, self.experiment_id, self.client.get_experiment(self.experiment_id).tags, budget)

    def describe_run(self, run_id: str, tags: dict[str, str], metrics: dict[str, float]) -> None:
        """Tags and step-0 metrics on a run, finished or not (the study's answer on its parent run)."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, metrics=_metrics(metrics, step=0),
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # -- one child run per trial (and, with replicates, one per replicate under it) ----------

    def start_trial_run(self, parent_run_id: str, trial_number: int, params: dict, tags: dict) -> str:
        return self.start_child_run(parent_run_id, f"trial-{trial_number}", params,
                                    {"sgdtune.trial_number": trial_number, **tags})

    def start_child_run(self, parent_run_id: str, name: str, params: dict, tags: dict) -> str:
        """A run nested under `parent_run_id` (a trial's under the study's, a replicate's under
        its trial's), with the study's name as a tag; its epochs and end as a trial run's."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                "mlflow.parentRunId": parent_run_id,
                "sgdtune.study_name": self.study_name,
                **{k: str(v) for k, v in tags.items()},
            },
        )
        # The params go with the run's first batch of epochs (one write instead of two).
        self._unwritten_params[run.info.run_id] = _params(params)
        self._unwritten[run.info.run_id] = []
        self._written_at[run.info.run_id] = time.monotonic()
        return run.info.run_id

    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """One epoch's metrics: buffered, written once FLUSH_EVERY_S has passed since the
        run's last write, the rest when the run ends (end_trial_run)."""
        unwritten = self._unwritten.setdefault(run_id, [])
        unwritten.extend(_metrics(metrics, step))
        if time.monotonic() - self._written_at.get(run_id, 0.0) >= FLUSH_EVERY_S:
            self.flush(run_id)

    def flush(self, run_id: str | None = None) -> None:
        """Write the buffered params and epochs of one run (None: of every run) now."""
        for rid in [run_id] if run_id is not None else list(self._unwritten):
            params = self._unwritten_params.pop(rid, [])
            if self._unwritten.get(rid) or params:  # MLflow splits big batches
                self.client.log_batch(rid, metrics=self._unwritten[rid], params=params)
            self._unwritten[rid] = []
            self._written_at[rid] = time.monotonic()

    def end_trial_run(
        self, run_id: str, state: str, summary: dict[str, float], fail_reason: str | None = None
    ) -> None:
        """Summary metrics, the Optuna state as a tag, and the matching run status."""
        from mlflow.entities import RunTag

        tags = [RunTag("sgdtune.trial_state", state)]
        if fail_reason:
            tags.append(RunTag("sgdtune.fail_reason", redact_url(fail_reason)[:5000]))  # errors may quote a URL
        epochs = self._unwritten.pop(run_id, [])
        params = self._unwritten_params.pop(run_id, [])
        self._written_at.pop(run_id, None)
        self.client.log_batch(run_id, metrics=epochs + _metrics(summary, step=0), params=params, tags=tags)
        self.client.set_terminated(run_id, status=STATUS_OF_STATE[state])

    def fail_stale_run(self, run_id: str, reason: str) -> bool:
        """End a run left RUNNING by a dead worker as FAILED, and any of its nested runs (a
        trial's replicates) still RUNNING; False if it had already ended."""
        from mlflow.entities import RunStatus

        running = f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
        for child in self.client.search_runs([self.experiment_id], filter_string=running):
            self.end_trial_run(child.info.run_id, "FAIL", {}, fail_reason=reason)
        run = self.client.get_run(run_id)
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            return False
        self.end_trial_run(run_id, "FAIL", {}, fail_reason=reason)
        return True

    def running_run_ids(self) -> set[str]:
        """The ids of the experiment's runs still RUNNING."""
        runs = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                       max_results=5000)
        return {r.info.run_id for r in runs}

    def end_runs_of_finished_trials(self, states: dict[int, tuple[str, str | None, dict]]) -> int:
        """End each RUNNING trial run of the study's parent run whose trial has finished,
        {number: (state, fail_reason, summary)}, with that state: its end was lost (a killed
        writer, a full disk). A complete or pruned trial's run gets the summary metrics its
        Optuna trial kept (the epochs still buffered when the write failed are lost; tag
        sgdtune.recovered says so); one whose trial kept none is ended FAILED, since a run
        without its metrics is not complete. A replaced study's runs are not this study's
        trials. How many were ended."""
        parent = self.find_parent_run()
        if parent is None:
            return 0
        running = f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{parent}'"  # this study's only
        ended = 0
        for run in self.client.search_runs([self.experiment_id], filter_string=running, max_results=1000):
            number = run.data.tags.get("sgdtune.trial_number")
            if number is None or int(number) not in states:
                continue
            state, reason, summary = states[int(number)]
            if state == "FAIL":
                self.fail_stale_run(run.info.run_id, reason or "the trial failed; its run's end was lost")
            elif not summary:
                self.fail_stale_run(run.info.run_id, f"the trial is {state} in Optuna, but its run's metrics were "
                                    "lost with its end (a killed writer or a store that refused writes)")
            else:
                self.client.set_tag(run.info.run_id, "sgdtune.recovered", RECOVERED_NOTE)
                self.end_trial_run(run.info.run_id, state, {k: v for k, v in summary.items()
                                                            if isinstance(v, (int, float))})
            ended += 1
        return ended

    # -- what a user takes away: datasets and trained networks (saved.py) --------------------

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        """One MLflow dataset input per record of saved.dataset_records (context tag)."""
        import numpy as np
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        from mlflow.types import Schema, TensorSpec

        inputs = []
        for d in datasets:
            specs = {k: Schema([TensorSpec(np.dtype(d[k]["dtype"]), tuple(d[k]["shape"]))]).to_json()
                     for k in ("features", "targets")}
            entity = Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"],
                             source=json.dumps(d["source"]), schema=json.dumps({"mlflow_tensorspec": specs}),
                             profile=json.dumps(d["profile"]))
            inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", d["context"])]))
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except MlflowException:
            # MLflow's SQL store looks a dataset up, then inserts it: two processes logging the
            # same new dataset at once (workers on several machines) collide on the insert;
            # a second try finds the other's row.
            time.sleep(0.5)
            self.client.log_inputs(run_id, datasets=inputs)

    def log_model(self, run_id: str, folder: str, spec: dict) -> str:
        """Log saved.write_network's folder as an MLflow logged model of the run (an MLflow
        pyfunc model whose loader is sgdtune.saved, with signature and input example), then
        delete the folder; the model's id. Neither torch nor the network is loaded here."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        try:
            model = self.client.create_logged_model(
                self.experiment_id, name=spec["name"], source_run_id=run_id,
                params={k: str(v)[:MAX_PARAM_CHARS] for k, v in spec["params"].items()}, tags=spec["tags"])
            try:
                self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
                local = Path(folder) / "mlflow-model"
                _write_pyfunc_model(local, Path(folder) / spec["network_dir"], spec, model.model_id, run_id)
                self.client.log_model_artifacts(model.model_id, str(local))
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            except Exception as e:
                if _deleted_meanwhile(e):
                    # Under --workers, another process's better trial pushed this one out of
                    # the best keep_models and deleted its model while it was being logged.
                    return model.model_id
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
                raise
            return model.model_id
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def delete_trial_models(self, trial_numbers: list[int]) -> None:
        """Delete the logged models of these trials (those that have one)."""
        drop = {str(n) for n in trial_numbers}
        for model in _all_logged_models(self.client, self.experiment_id):
            if model.tags.get("sgdtune.trial_number") in drop:
                try:
                    self.client.delete_logged_model(model.model_id)
                except Exception as e:  # another worker of the study deleted it first
                    if not _deleted_meanwhile(e):
                        raise


def _deleted_meanwhile(error: Exception) -> bool:
    """Whether an MLflow error says a logged model no longer exists (RESOURCE_DOES_NOT_EXIST)."""
    return getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error)


# -- reading a store (the report, the UI) -----------------------------------------------------


def store_exists(tracking_uri: str) -> bool:
    """False for a SQLite store whose file is missing (opening it would create an empty one);
    True otherwise, since a server's or a database's existence shows only when it is asked."""
    path = sqlite_path(tracking_uri)
    return path is None or path.is_file()


def holds_run(tracking_uri: str, run_id: str) -> bool:
    """Whether the store holds the run; False for a missing or empty (0-byte) SQLite file,
    which is not opened: MLflow would create its tables in it."""
    path = sqlite_path(tracking_uri)
    if path is not None:
        if not path.is_file() or path.stat().st_size == 0:
            return False
    return RunReader(tracking_uri).find_run(run_id) is not None


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
        from mlflow.entities import LoggedModelStatus

        run = self.find_run(run_id)
        if run is None:
            raise LookupError(f"its MLflow run {run_id} is not in the store (deleted, and removed by `mlflow gc`?)")
        found = [m for m in _all_logged_models(self.client, run.experiment_id)
                 if m.source_run_id == run_id and m.status == LoggedModelStatus.READY]
        return max(found, key=lambda m: m.creation_timestamp).model_id if found else None

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


def register_logged_model(tracking_uri: str, name: str, run_id: str) -> str | None:
    """Register the run's logged model in the model registry under `name` (created when
    missing); the new version, or None when the run has no logged model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_id = RunReader(tracking_uri).logged_model_id(run_id)
    if model_id is None:
        return None
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


def _all_logged_models(client, experiment_id: str) -> list:
    """Every logged model of the experiment that is not deleted (every page)."""
    out, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _write_pyfunc_model(local: Path, network: Path, spec: dict, model_id: str, run_id: str) -> None:
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
    (local / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
    mlflow.pyfunc.add_to_model(model, loader_module="sgdtune.saved", data=data)
    model.save(str(local / "MLmodel"))


def _requirements() -> list[str]:
    """pip requirements of a logged network, from installed metadata (no import of torch)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "numpy", "sgdtune"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _metrics(values: dict[str, float], step: int) -> list[Metric]:
    from mlflow.entities import Metric

    ts = _now_ms()
    return [Metric(k, float(v), ts, step) for k, v in values.items() if v is not None]


def _params(values: dict[str, object]) -> list[Param]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in values.items() if v is not None]
