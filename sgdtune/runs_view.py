"""The view of a study's runs that the MLflow UI opens on: its trials, best first, with
the params and metrics that explain batch size as columns.

MLflow 3's UI keeps its saved views of the runs table in experiment tags,
`mlflow.sharedViewState.<key>` (JSON: a name, times, and the state: sort, filter, selected
columns, their order), lists them under "Views", and opens one for a URL with
`viewStateShareKey=<key>` (what its "Save view" writes). The tracking modules write the tag
when they open an experiment (tracking.py); `ui_path` is the URL path.
Sorting by a metric makes MLflow list the runs flat, so the trials show at once instead of
under their collapsed parent run (which is a row too, at the end: it has no final_val_acc).
Columns named here that a study does not log (a regression's R² beside accuracy, the other
budgets) are left out by the UI.
"""

from __future__ import annotations

import json

KEY = "sgdtune-trials"
NAME = "sgdtune: trials, best first"  # as the Views menu lists it
TAG = f"mlflow.sharedViewState.{KEY}"
PARAMS = ("batch_size", "lr", "epochs", "updates", "examples")  # the searched ones; one budget is logged
METRICS = ("final_val_acc", "final_val_r2", "final_gen_gap", "final_loss_noise", "final_grad_noise_scale",
           "compute_time_s", "updates_to_target")
SORT_BY = "final_val_acc"  # the first objective of a classification study (README: names)


def columns() -> list[str]:
    """The UI's column ids: params first, then metrics, in the order above."""
    return [f"params.`{p}`" for p in PARAMS] + [f"metrics.`{m}`" for m in METRICS]


def view_state() -> str:
    """The tag's value: the runs table sorted by SORT_BY, best first, COLUMNS shown."""
    cols = columns()
    return json.dumps({
        "searchFilter": "",
        "orderByKey": f"metrics.`{SORT_BY}`",
        "orderByAsc": False,
        "selectedColumns": cols,
        "columnOrder": cols,
        "runsHiddenMode": "SHOW_ALL",  # charts show every trial, not the first 10
    }, sort_keys=True)


def tag_value(now_ms: int) -> str:
    """The tag as MLflow's UI saves a view: the state, named, with its times (ms since 1970)."""
    return json.dumps({"name": NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": view_state()})


def is_current(value: str | None) -> bool:
    """Whether a tag's value holds this version's view (then it need not be written again)."""
    try:
        return json.loads(value or "")["state"] == view_state()
    except (ValueError, KeyError, TypeError):
        return False


def ui_path(experiment_id: str) -> str:
    """Path and fragment of the view, after the UI's base URL (http://host:port)."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={KEY}"
