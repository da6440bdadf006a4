"""The console: live progress while trials run, and the closing lines of a study.

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil

import optuna
from optuna.trial import TrialState

from ..config import ExperimentConfig
from ..redact import redact_url
from ..store.tracking import ui_url
from ..trainer import BatchPlan, Diverged, EpochMetrics


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
    hide_interrupted_trials()


class InterruptedTrialFilter(logging.Filter):
    """Drops Optuna's report of a trial that Ctrl-C ended: it logs such a trial as failed,
    with the KeyboardInterrupt's traceback, then its value (optuna/study/_optimize.py), where
    the command says "interrupted" in one line. Every other record passes, real errors'
    tracebacks included."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_from: str | None = None  # the logger whose interrupted trial was dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(_exception_of(record), KeyboardInterrupt):
            self.hidden_from = record.name
            return False
        if record.name == self.hidden_from and "failed with value" in record.getMessage():
            self.hidden_from = None  # the same trial's second line
            return False
        return True


def _exception_of(record: logging.LogRecord) -> BaseException | None:
    """The exception a record reports, also after _OneLineFailures took its traceback off."""
    if record.exc_info:
        return record.exc_info[1]
    return getattr(record, "sgdtune_exception", None)


def hide_interrupted_trials() -> None:
    """InterruptedTrialFilter on Optuna's handlers: its modules' records reach them by
    propagation, which a filter on the "optuna" logger itself would not see."""
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, InterruptedTrialFilter) for f in handler.filters):
            handler.addFilter(InterruptedTrialFilter())


# The closing table's columns, most wanted first: a narrow terminal drops them from the end.
CLOSING_COLUMNS = ("trial", "batch_size", "lr", "val_acc", "budget", "gen_gap", "compute s", "mlflow run")
LEFT_ALIGNED = ("budget", "mlflow run")


def terminal_width() -> int:
    """Columns of the terminal ($COLUMNS first); 120 when the output is a file or a pipe,
    so a log gets the whole table."""
    return shutil.get_terminal_size((120, 24)).columns


def fit_columns(rows: list[dict[str, str]], width: int) -> list[str]:
    """CLOSING_COLUMNS, less those from the end that would not fit in `width` characters
    (each column takes its widest cell plus 3 for padding and border); at least four."""
    keep = list(CLOSING_COLUMNS)
    while len(keep) > 4 and 1 + sum(3 + max([len(c), *(len(r[c]) for r in rows)]) for c in keep) > width:
        keep.pop()
    return keep


class _OneLineFailures(logging.Filter):
    """Optuna logs each failed trial with its traceback, then a second line 'failed with value
    None'. A diverged trial is an expected ending (trainer/loop.py), a surplus one (another
    process started the last trial at the same moment, search.Surplus) too, and an interrupt
    or a store failure is said once by the CLI: for these the first line is enough."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[str] = set()  # "Trial N " prefixes whose second line to drop

    def filter(self, record: logging.LogRecord) -> bool:
        from ..errors import StoreError, Surplus, TrackingError

        exc = _exception_of(record)
        message = record.getMessage()
        if isinstance(exc, (Diverged, KeyboardInterrupt, TrackingError, StoreError, Surplus)):
            # The record goes on to the logger's other handlers: keep its exception where
            # their filters (InterruptedTrialFilter) still find it, without the traceback.
            record.exc_info, record.exc_text, record.sgdtune_exception = None, None, exc
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


def mean_and_spread(summary: dict[str, float], key: str) -> str:
    """'0.9806', or with replicates '0.9806 ± 0.0042': the mean and the sample standard
    deviation over the replicates (trial.mean_summary's <key>_std)."""
    text = f"{summary.get(key, float('nan')):.4f}"
    std = summary.get(f"{key}_std")
    return text if std is None else f"{text} ± {std:.4f}"


def print_closing(study: optuna.Study, config: ExperimentConfig, storage_url: str, tracking_uri: str | None,
                  top: int = 5) -> None:
    """A table of the top trials (as wide as the terminal allows), then where everything
    is and how to look at it."""
    width = terminal_width()
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if trials:
        _print_top(study, trials, config, width, top)
    else:  # a table with no rows says nothing: say why instead
        print(no_trial_completed(study))
    states = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print("trials: " + ", ".join(f"{v} {k.lower()}" for k, v in states.items()))
    print(f"optuna storage: {redact_url(storage_url)}")
    if tracking_uri:
        experiment_id = study.user_attrs["mlflow_experiment_id"]
        print(f"mlflow store:   {redact_url(tracking_uri)}")
        if tracking_uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
            print(f"open the MLflow UI: {ui_url(experiment_id, base=tracking_uri)}")
        else:
            print("open the MLflow UI on this store:")
            store = shlex.quote(redact_url(tracking_uri))
            print(f"  mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
            print(f"  then {ui_url(experiment_id)}")


def _print_top(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], config: ExperimentConfig, width: int,
               top: int) -> None:
    """The table of the `top` best complete trials; columns that do not fit are named below it."""
    from rich.console import Console
    from rich.table import Table

    trials = sorted(trials, key=lambda t: -t.values[0])
    # several objectives: the trials no other beats on all of them (Optuna's best_trials) get a *
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 and trials else set()
    rows = []
    for t in trials[:top]:
        s = t.user_attrs.get("summary", {})
        b = config.train.budget
        rows.append({
            "trial": f"{t.number}{' *' if t.number in front else ''}",
            "batch_size": str(t.params.get("batch_size", config.train.batch_size)),
            "lr": f"{t.params.get('lr', config.train.lr):.4g}",
            "val_acc": mean_and_spread(s, "final_val_acc"),
            "budget": f"{b}={t.params.get(b, getattr(config.train, b))}",
            "gen_gap": f"{s.get('final_gen_gap', float('nan')):+.4f}",
            "compute s": f"{s.get('compute_time_s', float('nan')):.2f}",
            "mlflow run": t.user_attrs.get("mlflow_run_id", "")[:12],
        })
    shown = fit_columns(rows, width)
    table = Table(title=f"top trials of study '{config.name}'")
    for col in shown:
        table.add_column(col, justify="left" if col in LEFT_ALIGNED else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    Console(width=width).print(table)
    if front:
        objectives = " and ".join(config.objectives)
        print(f"* on the Pareto front of {objectives}: trials {', '.join(map(str, sorted(front)))}")
    if len(shown) < len(CLOSING_COLUMNS):
        left_out = ", ".join(c for c in CLOSING_COLUMNS if c not in shown)
        print(f"(left out at {width} columns: {left_out})")


def print_recommendation(study: optuna.Study, tracking_uri: str | None, goal: str | None = None) -> dict | None:
    """The study's last lines: which batch size to train with, and why (report/recommend.py);
    also recorded on its parent MLflow run (tags, metrics, description)."""
    from ..report.answer import study_answer
    from ..report.recommend import lines

    recommendation = study_answer(study, tracking_uri, goal)
    if recommendation is None:
        print("recommendation: none yet (no complete trial)")
        return None
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if tracking_uri and parent_id:
        from ..report.write import record_recommendation
        from ..store.writer import BackgroundTracker

        tracker = BackgroundTracker(tracking_uri, study.study_name)  # the study's writer process, kept as the spare
        record_recommendation(tracker, parent_id, recommendation)
        budget = next((b for t in study.get_trials(deepcopy=False) for b in ("epochs", "updates", "examples")
                       if b in t.params), None)
        if budget:  # the saved view's parallel-coordinates chart, on the budget this study searched
            tracker.save_view(budget)
        tracker.close()  # every write made (errors raised here)
    for line in lines(recommendation):
        print(line)
    return recommendation


def no_trial_completed(study: optuna.Study) -> str:
    """The closing line of a study where no trial completed, with the commonest fail reasons."""
    from ..report.summary import failure_causes  # the report says it in the same words

    ended = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    failed = [t.user_attrs.get("fail_reason") for t in ended if t.state == TrialState.FAIL]
    why = f"; fail reasons: {failure_causes(failed)}" if failed else ""
    return (f"no trial completed, nothing to rank ({len(failed)} failed, {len(ended) - len(failed)} pruned{why}); "
            "check the search ranges (a diverging lr, a batch size too small for it) and the data")
