"""Layer: pages. The MLflow UI and optuna-dashboard on a store (`server.py`);
`python -m sgdtune.ui` is `__main__.py` here."""
