"""Writing a report: report.json, the page drawn from it, both logged to the study's parent
MLflow run; then the command line, `python -m sgdtune.report`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna

from ..errors import EXIT_BAD_INPUT, InputError
from ..stores import MLRUNS, default_storage_url
from ..tracking import Tracker, default_tracking_uri, quiet_logging, redact_url
from .build import build_report, to_json
from .html import render_html
from .inputs import load_study, open_runs


def write_report(study_name: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
                 out_dir: str | Path = "reports", *, command: str | None = None) -> Path:
    """Write <out_dir>/<study>/report.json and report.html; log both to the study's parent MLflow run.

    Defaults match the study's: storage mlruns/optuna.journal, tracking sqlite:///<abs>/mlruns/mlflow.db.
    `command` is what the report shows as its own command (default: built from the arguments).
    Returns the report directory. Raises InputError (sgdtune.errors) on bad input.
    """
    storage = storage or default_storage_url(MLRUNS)
    study = load_study(storage, study_name)
    store = tracking_uri or default_tracking_uri(MLRUNS)
    reader = open_runs(study, store)
    if command is None:
        flags = {"--study-name": study_name, "--storage": storage if storage != default_storage_url(MLRUNS) else None,
                 "--tracking-uri": tracking_uri, "--out": None if str(out_dir) == "reports" else str(out_dir)}
        command = report_command([x for flag, value in flags.items() if value for x in (flag, str(value))])
    text = to_json(build_report(study, reader, command))
    folder = Path(out_dir) / study.study_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(text)
    (folder / "report.html").write_text(render_html(json.loads(text)))  # drawn from the file's content alone
    if reader is not None:  # the store holds the parent run (open_runs checked): Tracker creates nothing
        tracker = Tracker(store, study.study_name)
        for name in ("report.json", "report.html"):
            tracker.log_artifact(study.user_attrs["mlflow_parent_run_id"], folder / name, "report")
    return folder


def report_command(argv: Sequence[str]) -> str:
    """The command line, any URL password masked."""
    return shlex.join(["python", "-m", "sgdtune.report", *(redact_url(a) for a in argv)])


# -- the command line ---------------------------------------------------------------------------



EPILOG = """examples:
  python -m sgdtune.report                          # the only study in mlruns/optuna.journal
  python -m sgdtune.report --study-name quick       # one of several studies
  python -m sgdtune.report --study-name q8 --out /tmp/reports
  python -m sgdtune.report --storage postgresql://user@host/db --tracking-uri http://host:5000

writes <out>/<study>/report.html (opens offline) and report.json (every number shown; what
varies between runs - timings, MLflow ids, dates - is under "volatile"), and logs both to
the study's parent MLflow run under report/.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgdtune.report", epilog=EPILOG,
                                description="Write a self-contained HTML report (and its JSON) for one study.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-name", help="study to report (default: the only study in the storage)")
    p.add_argument("--storage", help="Optuna storage: journal file or SQLAlchemy URL (default: mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    p.add_argument("--out", default="reports",
                   help="output folder; the report goes in <out>/<study>/ (default: reports)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    quiet_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        folder = write_report(args.study_name, args.storage, args.tracking_uri, args.out, command=report_command(argv))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {folder / 'report.html'}")
    print(f"      {folder / 'report.json'}")
    return 0
