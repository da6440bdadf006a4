"""Memory that stays flat: no trial's tensors survive it, whatever way it ended."""

import sys
import textwrap

from conftest import EXPERIMENTS
from optuna.trial import TrialState

from sgdtune.config import load_experiment
from sgdtune.study.run import run_study

# A model factory that, each time a trial builds its network, counts the networks and
# parameters of earlier trials still alive. No gc.collect(): what only the garbage collector
# would free (a reference cycle) counts as alive, as it does for a GPU's memory.
FACTORY = """
    import weakref
    from torch import nn

    REFS = []
    ALIVE_AT_EACH_BUILD = []

    def make(n_features, n_classes):
        ALIVE_AT_EACH_BUILD.append(sum(r() is not None for r in REFS))
        net = nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Linear(16, n_classes))
        REFS.extend(weakref.ref(t) for t in [net, *net.parameters()])
        return net
"""


def test_no_trials_network_or_parameters_outlive_it_complete_pruned_or_diverged(tmp_path, monkeypatch):
    (tmp_path / "memfactory.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import memfactory

    config = load_experiment(EXPERIMENTS / "quick.toml", n_trials=8, name="memory", **{
        "model.factory": "memfactory:make",
        "search.lr.high": 50.0,  # some trials diverge
        "pruner.name": "median", "pruner.n_startup_trials": 1, "pruner.n_warmup_steps": 0,  # some are pruned
    })
    study = run_study(config, mlruns=tmp_path / "mlruns")

    states = {t.state for t in study.trials}
    assert {TrialState.COMPLETE, TrialState.FAIL} <= states, states  # the failing path was exercised
    builds = memfactory.ALIVE_AT_EACH_BUILD
    assert len(builds) >= 8  # one per trial, plus the weight count at the start
    assert builds == [0] * len(builds), f"tensors of earlier trials alive at each build: {builds}"
    sys.modules.pop("memfactory", None)
