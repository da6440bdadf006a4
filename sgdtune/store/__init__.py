"""Layer: store. Where a study and its runs are kept, and the only code that talks to MLflow.

- `store/stores.py`: storage URLs and default paths; both stores opened and checked before a study
  writes; a finished study and its runs opened for reading.
- `store/tracking.py` writes (`Tracker`), `store/writer.py` makes those writes in a separate process,
  `store/run_reader.py` reads, `store/logged_models.py` packages trained networks, `store/runs_view.py` is the
  view the MLflow UI opens on, `store/mlflow_env.py` sets MLflow's environment before it is imported.
- `store/startlock.py`: one process at a time starts a study (a file lock, a PostgreSQL advisory lock).
- `store/proxy.py`: Optuna's gRPC storage proxy (`sgdtune storage-proxy`).

No module here imports torch; below it lie only config and the base modules.
"""
