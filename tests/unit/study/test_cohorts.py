"""Running a study's trials in this process (sgdtune/study/cohorts.py): settling beside other workers."""

import threading
import time
from types import SimpleNamespace

import optuna

from sgdtune.study.cohorts import settle, settle_poll_s


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
