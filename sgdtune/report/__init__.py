"""Sweep report: Optuna study + MLflow runs -> report.json -> report.html.

`python -m sgdtune.report` writes reports/<study>/report.json (every number the report
shows) and report.html (self-contained: plotly.js inlined once, no network request), then
logs both as artifacts of the study's parent MLflow run.

Two rules keep it reproducible and honest:
- render_html(report) reads nothing but the report dict: the page draws report.json.
- What differs between two runs of the same command (timings, memory, MLflow ids, paths,
  dates) lives under the top-level key "volatile"; the rest is a function of the study.

Uncertainty is part of the numbers: val_acc carries its binomial standard error (combined
with the replicate SE when trials average seeds), B_crit, S_min and the loss-noise slope a
seeded percentile bootstrap interval (ci_low, ci_high, level), the noise scale its SE or a
lower-bound flag; the summary says when a difference is within noise (|diff| < 2 SE).

The modules, in the order the data flows: inputs (the study, its MLflow runs, one row per
trial), sections (the numbers, section by section), summary (sentences from them), build
(report.json assembled), html (the page drawn from report.json), write (the files, the
artifacts; the command line is cli.report_main).

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

# Names are resolved on first use: `python -m sgdtune.report --help` imports this package
# before cli.py parses its flags, and the modules behind it load Optuna and numpy.
_EXPORTS = {"build_report": ".build", "to_json": ".build", "render_html": ".html", "load_study": "sgdtune.store.stores",
            "open_runs": "sgdtune.store.stores", "pareto_front": ".sections", "report_command": ".write",
            "write_report": ".write"}

__all__ = ["build_report", "load_study", "open_runs", "pareto_front", "render_html", "report_command", "to_json",
           "write_report"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
