"""The console: live progress while trials run, and the closing lines of a study."""

from __future__ import annotations

import logging
import os
import shlex
import sys

import optuna
from optuna.trial import TrialState

from .config import ExperimentConfig
from .tracking import redact_url, ui_url
from .trainer import BatchPlan, Diverged, EpochMetrics


class Progress:
    """Live display: trials done, best so far, the running trial's epoch."""

    def __init__(self, n_trials: int, done: int, best: float | None):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.best = best
        self.bar = RichProgress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            transient=False,
        )
        self.task = self.bar.add_task("trials", total=n_trials, completed=done, status=self._best())

    def _best(self) -> str:
        return f"best val_acc {self.best:.4f}" if self.best is not None else ""

    def trial_started(self, number: int, tc, plan: BatchPlan) -> None:
        self.current = f"trial {number}: B={tc.batch_size} lr={tc.effective_lr:.3g} {tc.budget}={tc.budget_size}"
        self.bar.update(self.task, status=f"{self._best()}  {self.current}")

    def epoch_done(self, m: EpochMetrics, epochs: int) -> None:
        status = f"{self._best()}  {self.current} epoch {m.epoch}/{epochs} val_acc {m.val_acc:.3f}"
        self.bar.update(self.task, status=status)

    def show(self, done: int, best: float | None) -> None:
        """Refresh from the storage's counts (while worker processes run the trials)."""
        self.best = best
        self.bar.update(self.task, completed=done, status=self._best())

    def trial_done(self, number: int, state: str, summary: dict) -> None:
        acc = summary.get("final_val_acc")
        if state == "COMPLETE" and acc is not None and (self.best is None or acc > self.best):
            self.best = acc
        self.bar.update(self.task, advance=1, status=self._best())


def quiet_libraries() -> None:
    """The console shows progress and a closing table; the libraries' INFO lines would bury it."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


class _OneLineFailures(logging.Filter):
    """Optuna logs each failed trial with its traceback, then a second line 'failed with value
    None'. A diverged trial is an expected ending (trainer/loop.py), and an interrupt or a
    store failure is said once by the CLI: for these the first line is enough."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[str] = set()  # "Trial N " prefixes whose second line to drop

    def filter(self, record: logging.LogRecord) -> bool:
        from .reclaim import StoreError
        from .writer import TrackingError

        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(exc, (Diverged, KeyboardInterrupt, TrackingError, StoreError)):
            record.exc_info, record.exc_text = None, None
            self.quiet.add(message.split("failed", 1)[0])
            return True
        prefix = message.split("failed with value", 1)[0]
        if prefix in self.quiet and message != prefix:
            self.quiet.discard(prefix)
            return False
        return True


def one_line_trial_failures() -> None:
    """A diverged trial (or one ended by Ctrl-C, SIGTERM or a failing store) is logged in one
    line, without Optuna's traceback: a filter on the handlers of Optuna's logger."""
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _OneLineFailures) for f in handler.filters):
            handler.addFilter(_OneLineFailures())


def print_closing(study: optuna.Study, config: ExperimentConfig, storage_url: str, tracking_uri: str | None,
                  top: int = 5) -> None:
    """A table of the top trials, then where everything is and how to look at it."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)  # a log file gets the whole table
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    trials.sort(key=lambda t: -t.values[0])
    table = Table(title=f"top trials of study '{config.name}'")
    for col in ("trial", "batch_size", "lr", "budget", "val_acc", "gen_gap", "compute s", "mlflow run"):
        table.add_column(col, justify="right" if col not in ("budget", "mlflow run") else "left")
    for t in trials[:top]:
        s = t.user_attrs.get("summary", {})
        b = config.train.budget
        budget = f"{b}={t.params.get(b, getattr(config.train, b))}"
        table.add_row(
            str(t.number),
            str(t.params.get("batch_size", config.train.batch_size)),
            f"{t.params.get('lr', config.train.lr):.4g}",
            budget,
            f"{s.get('final_val_acc', float('nan')):.4f}",
            f"{s.get('final_gen_gap', float('nan')):+.4f}",
            f"{s.get('compute_time_s', float('nan')):.2f}",
            t.user_attrs.get("mlflow_run_id", "")[:12],
        )
    console.print(table)
    states = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print("trials: " + ", ".join(f"{v} {k.lower()}" for k, v in states.items()))
    print(f"optuna storage: {redact_url(storage_url)}")
    if tracking_uri:
        print(f"mlflow store:   {redact_url(tracking_uri)}")
        print("open the MLflow UI on this store:")
        print(f"  mlflow ui --backend-store-uri {shlex.quote(redact_url(tracking_uri))} --host 127.0.0.1 --port 5000")
        print(f"  then {ui_url(study.user_attrs['mlflow_experiment_id'])}")
