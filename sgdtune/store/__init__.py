"""Layer: store. Where a study and its runs are kept, and the only code that talks to MLflow.

- `store/stores.py`: storage URLs and default paths; Optuna's storage opened and checked; a finished
  study and its runs opened for reading. `store/checks.py`: both stores checked before a study writes;
  `store/journal.py`: the journal file opened, a torn last record repaired.
- `store/tracking.py` writes (`Tracker`), `store/writer.py` sends those writes to a separate process
  (`BackgroundTracker`), `store/writer_process.py` is what runs in it,
  `store/run_reader.py` reads, `store/logged_models.py` packages trained networks, `store/runs_view.py` is the
  view the MLflow UI opens on, `store/mlflow_env.py` sets MLflow's environment before it is imported.
- `store/startlock.py`: one process at a time starts a study (a file lock, a PostgreSQL advisory lock).
- `store/proxy.py`: Optuna's gRPC storage proxy (`sgdtune storage-proxy`).

No module here imports torch; below it lie only config and the base modules.
"""
