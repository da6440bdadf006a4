"""sgdtune: which batch size should I train with, and why?

The Python API for notebooks and scripts; the CLI is a thin layer over it. Names are
resolved on first use so that `import sgdtune` stays quick.

Layer: edge (the command lines and the Python API; docs/architecture.md).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_experiment": "sgdtune.config",
    "ExperimentConfig": "sgdtune.config",
    "InputError": "sgdtune.errors",
    "run_study": "sgdtune.study.run",
    "train": "sgdtune.trainer",
    "train_stacked": "sgdtune.trainer",
    "TrainConfig": "sgdtune.trainer",
    "TrainResult": "sgdtune.trainer",
    "EpochMetrics": "sgdtune.trainer",
    "load_data": "sgdtune.data",
    "DataConfig": "sgdtune.data",
    "write_report": "sgdtune.report",
    "load_model": "sgdtune.saved",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name == "ConfigError":  # its name before there was one input-error type
        name = "InputError"
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sgdtune' has no attribute {name!r}")
