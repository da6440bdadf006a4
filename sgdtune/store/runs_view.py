"""The view of a study's runs that the MLflow UI opens on: its trials, best first, with
the params and metrics that explain batch size as columns.

MLflow 3's UI keeps its saved views of the runs table in experiment tags,
`mlflow.sharedViewState.<key>` (JSON: a name, times, and the state: sort, filter, selected
columns, their order), lists them under "Views", and opens one for a URL with
`viewStateShareKey=<key>` (what its "Save view" writes). The tracking modules write the tag
when they open an experiment (store/tracking.py); `ui_path` is the URL path.
Sorting by a metric makes MLflow list the runs flat, so the trials show at once instead of
under their collapsed parent run (which is a row too, at the end: it has no final_val_acc).
The sort key is `complete_val_acc`, the final_val_acc that only a COMPLETE trial's run logs
(study/trial.py): the UI puts runs without the key last, so complete trials come first, best
first, and pruned or failed ones (whose partial final_val_acc would otherwise rank among
them) after. Columns named here that a study does not log (a regression's R² beside
accuracy, the other budgets) are left out by the UI.

The state may also hold the charts of the runs page's Chart view (MLflow 3.17's UI state
fields `compareRunCharts`, `compareRunSections`: server/js main bundle), so the view presets
a parallel-coordinates chart of batch_size, lr, the study's budget and final_val_acc. The
separate compare page (tick runs, press Compare: #/compare-runs?runs=...) keeps its state in
its URL only; no saved view reaches it.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import json

KEY = "sgdtune-trials"
NAME = "sgdtune: trials, complete first, best first"  # as the Views menu lists it
TAG = f"mlflow.sharedViewState.{KEY}"
PARAMS = ("batch_size", "lr", "epochs", "updates", "examples")  # the searched ones; one budget is logged
METRICS = ("final_val_acc", "final_val_r2", "final_gen_gap", "final_loss_noise", "final_grad_noise_scale",
           "compute_time_s", "updates_to_target")
SORT_BY = "complete_val_acc"  # final_val_acc of COMPLETE trials only (docs/records.md): they come first
BUDGETS = ("epochs", "updates", "examples")
# fixed ids: the state is a function of the budget
SECTION_ID, METRICS_SECTION_ID, CHART_ID = "sgdtune-section", "sgdtune-model-metrics", "sgdtune-parallel"


def columns() -> list[str]:
    """The UI's column ids: params first, then metrics, in the order above."""
    return [f"params.`{p}`" for p in PARAMS] + [f"metrics.`{m}`" for m in METRICS]


def parallel_chart(budget: str) -> tuple[list[dict], list[dict]]:
    """(compareRunCharts, compareRunSections): one parallel-coordinates card of batch_size, lr,
    the budget and final_val_acc (shape as the UI's RunsChartsParallelCardConfig), alone in a
    section of its own, listed first: in MLflow's "Model metrics" section the UI would put it
    after the chart it adds for every metric."""
    card = {"uuid": CHART_ID, "type": "PARALLEL", "runsCountToCompare": 100, "metricSectionId": SECTION_ID,
            "deleted": False, "isGenerated": False, "selectedParams": ["batch_size", "lr", budget],
            "selectedMetrics": ["final_val_acc"], "showAllRuns": True}
    section = {"uuid": SECTION_ID, "name": "Batch size, lr, budget and val_acc", "display": True,
               "isReordered": False, "deleted": False, "isGenerated": False}
    # MLflow's own section, empty: the UI fills it with a chart per metric (without it, it adds none)
    metrics = {"uuid": METRICS_SECTION_ID, "name": "Model metrics", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": True}
    return [card], [section, metrics]


def view_state(budget: str = "epochs") -> str:
    """The tag's value: the runs table sorted by SORT_BY, best first, COLUMNS shown, and the Chart
    view's parallel-coordinates card for `budget` (the study's: epochs, updates or examples)."""
    cols = columns()
    charts, sections = parallel_chart(budget)
    return json.dumps({
        "searchFilter": "",
        "orderByKey": f"metrics.`{SORT_BY}`",
        "orderByAsc": False,
        "selectedColumns": cols,
        "columnOrder": cols,
        "runsHiddenMode": "SHOW_ALL",  # charts show every trial, not the first 10
        "compareRunCharts": charts,
        "compareRunSections": sections,
    }, sort_keys=True)


def tag_value(now_ms: int, budget: str = "epochs") -> str:
    """The tag as MLflow's UI saves a view: the state, named, with its times (ms since 1970)."""
    return json.dumps({"name": NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": view_state(budget)})


def is_current(value: str | None, budget: str | None = None) -> bool:
    """Whether a tag's value holds this version's view (then it need not be written again), for
    `budget`, or for any budget when None (a study that has written its own keeps it)."""
    try:
        state = json.loads(value or "")["state"]
    except (ValueError, KeyError, TypeError):
        return False
    return state in ([view_state(budget)] if budget else [view_state(b) for b in BUDGETS])


def ui_path(experiment_id: str) -> str:
    """Path and fragment of the view, after the UI's base URL (http://host:port)."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={KEY}"
