"""Layer: study. One study from its experiment to its last trial.

`python -m sgdtune.study` is `__main__.py` here. The path through this package:
- `run.py`: `run_study`, the steps only a study's first process takes (store checks, the
  start lock, its identity, the parent run, the device profile, the workers' supervision);
- `study/session.py`: the run's options checked once (`RunOptions`), and the setup this process and
  every worker share (`Session`: stores, device, data, storage, study, writer);
- `study/cohorts.py`: the one dispatch of trials, one by one or stacked;
- `study/trial.py`: one trial's life, from its suggested values to COMPLETE, PRUNED or FAIL;
- `study/identity.py`: what a study computes with, recorded in its storage; the refusal of a changed
  configuration, `--fresh` and `--extend`;
- `study/workers.py`, `study/reclaim.py`, `study/cluster.py`: worker processes, trials of dead processes,
  cluster job files;
- `study/console.py`: live progress and the closing lines.

`run_study` is resolved on first use, so that `python -m sgdtune.study --help` (which imports
this package first) loads nothing heavy.
"""


def __getattr__(name: str):
    if name == "run_study":
        from .run import run_study

        return run_study
    raise AttributeError(f"module 'sgdtune.study' has no attribute {name!r}")
