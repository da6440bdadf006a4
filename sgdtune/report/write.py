"""Writing a report: report.json, the page drawn from it, both logged to the study's parent
MLflow run. Its command line is cli.report_main.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..files import atomic_write_all
from ..redact import redact_tree, redact_url
from ..store.stores import MLRUNS, default_storage_url, load_study, open_runs
from ..store.tracking import Tracker, default_tracking_uri
from .build import build_report, to_json
from .html import render_html
from .recommend import run_records


def write_report(study_name: str | None = None, storage: str | None = None, tracking_uri: str | None = None,
                 out_dir: str | Path = "reports", *, command: str | None = None, goal: str | None = None) -> Path:
    """Write <out_dir>/<study>/report.json and report.html; log both to the study's parent MLflow run,
    with the recommendation (`goal`: one of report.recommend.GOALS) as its tags, metrics and description.

    Defaults match the study's: storage mlruns/optuna.journal, tracking sqlite:///<abs>/mlruns/mlflow.db.
    `command` is what the report shows as its own command (default: built from the arguments).
    Returns the report directory. Raises InputError (sgdtune.errors) on bad input.
    """
    check_out_dir(out_dir)  # before the study is read: a wrong --out costs nothing
    storage = storage or default_storage_url(MLRUNS)
    study = load_study(storage, study_name)
    store = tracking_uri or default_tracking_uri(MLRUNS)
    reader = open_runs(study, store)
    if command is None:  # the defaults left out: the command reads the same from the study's folder
        flags = {"--study-name": study_name, "--storage": storage if storage != default_storage_url(MLRUNS) else None,
                 "--tracking-uri": tracking_uri if tracking_uri != default_tracking_uri(MLRUNS) else None,
                 "--out": None if str(out_dir) == "reports" else str(out_dir)}
        command = report_command([x for flag, value in flags.items() if value for x in (flag, str(value))])
    # Every string masked (a URL password in a tag, an experiment file recorded verbatim).
    text = to_json(redact_tree(build_report(study, reader, command, goal)))
    folder = report_folder(out_dir, study.study_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError("--out", "must be a folder that can be created and written in",
                         f"{str(out_dir)!r} ({e.strerror or e})") from None
    # Both files replaced at once, each written whole: a kill or a full disk leaves the previous pair.
    atomic_write_all({folder / "report.json": text,
                      folder / "report.html": render_html(json.loads(text))},  # drawn from the file's content alone
                     field="--out")
    if reader is not None:  # the store holds the parent run (open_runs checked): Tracker creates nothing
        tracker = Tracker(store, study.study_name)
        for name in ("report.json", "report.html"):
            tracker.log_artifact(study.user_attrs["mlflow_parent_run_id"], folder / name, "report")
        recommendation = json.loads(text).get("recommendation")
        if recommendation:
            record_recommendation(tracker, study.user_attrs["mlflow_parent_run_id"], recommendation)
    return folder


def record_recommendation(tracker: Tracker, parent_run_id: str, recommendation: dict) -> None:
    """The recommendation on the study's parent run: tags, metrics and its description."""
    tags, metrics = run_records(recommendation)
    tracker.describe_run(parent_run_id, tags, metrics)


def check_out_dir(out_dir: str | Path) -> None:
    """--out names a folder (created if missing), not a file or a device such as /dev/null."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise InputError("--out", "must be a folder (the report goes in <out>/<study>/), not a file or a device",
                         repr(str(out_dir)))


def report_folder(out_dir: str | Path, study_name: str) -> Path:
    """<out_dir>/<study_name>, refused (InputError) unless it lies inside out_dir: the name
    was checked (config.check_name), this checks the path it became."""
    root = Path(out_dir).resolve()
    folder = (root / study_name).resolve()
    if folder.parent != root:
        raise InputError("--study-name", f"must name a folder inside {str(out_dir)!r}", repr(study_name))
    return Path(out_dir) / study_name


def report_command(argv: Sequence[str], prog: str = "python -m sgdtune.report") -> str:
    """The command line as typed (prog: `python -m sgdtune.report` or `sgdtune report`),
    any URL password masked."""
    return shlex.join([*prog.split(), *(redact_url(a) for a in argv)])
