"""MLflow's environment, set before anything imports mlflow: every module that talks to
MLflow (store/tracking.py, store/run_reader.py, store/logged_models.py) imports this one first. A variable the
user set stays as it is.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
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
# MLflow's default of 7 retries of 120 s each (checks.probe_server refuses one down at start).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
