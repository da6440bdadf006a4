"""Writing to MLflow: `Tracker`, with explicit run ids (no global active run); store/writer.py
replays its calls in a child process. The store's URIs live here too (MLflow's environment:
store/mlflow_env.py). Reading a store is store/run_reader.py's (`RunReader`), packaging a trained network as a
logged model store/logged_models.py's.

A study is an MLflow experiment with one parent run; each trial is a nested child run named
`trial-<n>`. Names and tags: docs/records.md.

Each write to a SQLite store costs 10-40 ms of ORM work, often more than a small trial's
epoch. So a trial's params and epochs are buffered: written at most every FLUSH_EVERY_S
while it runs (the UI still follows a long trial), the rest together with the summary in
one call when the trial ends: a short trial costs three writes (create, log, terminate).
A study does not call Tracker itself: store/writer.py runs it in a separate process, so that none
of this time is spent in the training process.

About 480 lines: one concept, every write MLflow gets from a trial (the Tracker class, most of
the module) with the store's URIs it writes to; reading and packaging live apart.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ..redact import redact_url  # the masking every writer here applies
from . import (
    mlflow_env,  # noqa: F401 - MLflow's environment, before anything imports mlflow
    runs_view,
)
from .logged_models import all_logged_models, deleted_meanwhile, write_pyfunc_model

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
    (store/runs_view.py); on `base` (a tracking server's URL) or http://host:port."""
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
                write_pyfunc_model(local, Path(folder) / spec["network_dir"], spec, model.model_id, run_id)
                self.client.log_model_artifacts(model.model_id, str(local))
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            except Exception as e:
                if deleted_meanwhile(e):
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
        for model in all_logged_models(self.client, self.experiment_id):
            if model.tags.get("sgdtune.trial_number") in drop:
                try:
                    self.client.delete_logged_model(model.model_id)
                except Exception as e:  # another worker of the study deleted it first
                    if not deleted_meanwhile(e):
                        raise


def _metrics(values: dict[str, float], step: int) -> list[Metric]:
    from mlflow.entities import Metric

    ts = _now_ms()
    return [Metric(k, float(v), ts, step) for k, v in values.items() if v is not None]


def _params(values: dict[str, object]) -> list[Param]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in values.items() if v is not None]
