"""Torch threads per trial (sgdtune/threads.py): the choice of a count, "auto" within the cores
and OMP_NUM_THREADS, and the --threads flag as a study records it."""

import os

import optuna
import pytest
from conftest import run_cli

from sgdtune.store.stores import open_storage
from sgdtune.threads import WORK_PER_THREAD, ThreadChooser, choose_threads

SHORT = ["--set", "search.epochs.low=1", "--set", "search.epochs.high=2", "--no-progress"]

DIGITS_MLP = 64 * 128 + 128 + 128 * 10 + 10  # weights of the default model on digits (64-128-10)


@pytest.mark.parametrize(("work", "cores", "load", "expected"), [
    (0, 2, 0.0, 1),                               # no work: one thread
    (256 * DIGITS_MLP, 2, 0.0, 1),                # 2.5 M multiply-adds: too little to pay for a second
    (1024 * DIGITS_MLP, 2, 0.0, 2),               # 9.8 M: two threads on two idle cores
    (1024 * DIGITS_MLP, 2, 14.0, 1),              # the same at load 14: one
    (1024 * DIGITS_MLP, 2, 0.4, 2),               # 1.6 idle cores round to 2
    (1024 * DIGITS_MLP, 2, 0.6, 1),               # 1.4 round to 1
    (3 * WORK_PER_THREAD, 16, 0.0, 3),            # the work, not the cores, limits
    (100 * WORK_PER_THREAD, 16, 0.0, 16),         # the cores limit
    (100 * WORK_PER_THREAD, 16, 4.0, 12),         # minus what others keep busy
    (100 * WORK_PER_THREAD, 16, -1.0, 16),        # a negative load counts as none
    (100 * WORK_PER_THREAD, 1, 0.0, 1),
])
def test_choose_threads_known_answers(work, cores, load, expected):
    assert choose_threads(work, cores, load) == expected


def test_choose_threads_refuses_no_cores():
    with pytest.raises(ValueError, match="cores must be >= 1; got 0"):
        choose_threads(1e9, 0, 0.0)


def test_a_fixed_thread_count_is_set_whatever_the_work_and_auto_stays_within_the_cores():
    import torch

    before = torch.get_num_threads()
    try:
        assert ThreadChooser(3).apply(0) == 3 and torch.get_num_threads() == 3
        auto = ThreadChooser("auto", cores=1)
        assert auto.apply(1e12) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_auto_does_not_follow_the_load_so_a_study_computes_the_same_numbers(monkeypatch):
    import sgdtune.threads as threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # tests/conftest.py sets 1: no cap here
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))  # a very busy machine
    assert ThreadChooser("auto", cores=2).choose(10 * WORK_PER_THREAD) == 2
    assert not hasattr(threads, "load_average")


def test_auto_keeps_to_omp_num_threads_where_the_user_set_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ThreadChooser("auto", cores=16).choose(1e12) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert ThreadChooser("auto", cores=16).cores == 16


def test_the_threads_flag_is_recorded_per_trial_and_a_bad_value_is_one_line(workdir):
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--threads", "1", "--n-trials", "2", "--no-tracking",
                   *SHORT, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="quick", storage=open_storage("mlruns/optuna.journal")).get_trials()
    assert [t.user_attrs["torch_threads"] for t in trials] == [1, 1]
    bad = run_cli("sgdtune.study", "experiments/quick.toml", "--threads", "0", "--no-tracking", *SHORT, cwd=workdir)
    assert bad.returncode == 2
    assert bad.stderr.strip() == 'error: experiments/quick.toml: threads: must be "auto" or a whole count >= 1; got 0'
