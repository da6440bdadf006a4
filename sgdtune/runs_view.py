"""The view of a study's runs that the MLflow UI opens on: its trials, best first, with
the params and metrics that explain batch size as columns.

MLflow 3's UI keeps a shareable runs-table view in an experiment tag,
`mlflow.sharedViewState.<key>` (JSON: sort, filter, selected columns, their order), and opens
it for a URL with `viewStateShareKey=<key>` (its "Share" button writes the same). The tracking
modules write the tag when they open an experiment (tracking.py); `ui_path` is the URL path.
Sorting by a metric makes MLflow list the runs flat, so the trials show at once instead of
under their collapsed parent run (which is a row too, at the end: it has no final_val_acc).
Columns named here that a study does not log (a regression's R² beside accuracy, the other
budgets) are left out by the UI.
"""

from __future__ import annotations

import json

KEY = "sgdtune-trials"
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


def ui_path(experiment_id: str) -> str:
    """Path and fragment of the view, after the UI's base URL (http://host:port)."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={KEY}"
