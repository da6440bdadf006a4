"""Running a study's trials in this process (sgdtune/study/cohorts.py): settling beside other workers, and
an interrupt while Optuna records a trial."""

import os
import signal
import threading
import time
from types import SimpleNamespace

import optuna
import pytest
from conftest import EXPERIMENTS
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState

from sgdtune.config import load_experiment
from sgdtune.store.stores import open_storage
from sgdtune.study.cohorts import settle, settle_poll_s
from sgdtune.study.run import run_study


def test_the_storage_is_read_every_tenth_of_a_heartbeat_between_1_s_and_the_heartbeat():
    assert [settle_poll_s(h) for h in (0.5, 5, 20, 60, 600)] == [0.5, 1.0, 2.0, 6.0, 60.0]


def test_settling_ends_within_a_poll_of_the_last_running_trial_not_a_heartbeat_later():
    """Another worker's trial (RUNNING here) ends 0.3 s in; with a 20 s heartbeat the storage is
    read every 2 s, so this worker leaves within seconds (it slept the whole 20 s before)."""
    study = optuna.create_study(direction="maximize")
    other = study.ask()
    threading.Timer(0.3, lambda: study.tell(other, 0.5)).start()
    started = time.monotonic()
    settle(study, objective=None, config=SimpleNamespace(n_trials=1), heartbeat=20)
    assert time.monotonic() - started < 10
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


@pytest.mark.parametrize("lr, told", [(0.05, TrialState.COMPLETE), (1e4, TrialState.FAIL)],
                         ids=["complete", "diverged"])
def test_an_interrupt_while_optuna_records_a_trial_stops_the_study_after_the_trial_is_recorded(
        tmp_path, monkeypatch, lr, told):
    """Ctrl-C (or SIGTERM, the same path) landing inside Optuna's tell, here its journal write,
    is held until the trial's state is written, then stops the study. Raised there, it broke
    Optuna's _run_trial (an UnboundLocalError, exit 1 with a traceback) and the trial stayed
    RUNNING. The signal is sent from inside the write, as a kill from outside can land."""
    real = JournalStorage.set_trial_state_values
    sent = []

    def interrupted(self, trial_id, state, values=None):
        if state.is_finished() and not sent:
            sent.append(state)
            os.kill(os.getpid(), signal.SIGINT)  # Python raises at the next bytecode: in this write
        return real(self, trial_id, state, values)

    monkeypatch.setattr(JournalStorage, "set_trial_state_values", interrupted)
    config = load_experiment(EXPERIMENTS / "quick.toml", n_trials=3, profile=False,
                             **{"search.lr": {"choices": [lr]}})
    with pytest.raises(KeyboardInterrupt):
        run_study(config, track=False, mlruns=tmp_path / "mlruns")
    study = optuna.load_study(study_name="quick", storage=open_storage(str(tmp_path / "mlruns" / "optuna.journal")))
    assert sent == [told]
    assert [t.state for t in study.get_trials()] == [told]  # recorded, then stopped: no second trial
