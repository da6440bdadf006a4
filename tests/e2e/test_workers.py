"""Scale-out and faults: parallel workers, PostgreSQL + mlflow server, kill -9, Ctrl-C, passwords."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from conftest import EXPERIMENTS, PG_PASSWORD, run_cli
from mlflow import MlflowClient
from optuna.trial import TrialState

from sgdtune.store.stores import open_storage
from sgdtune.study.workers import split

SHORT = ["--set", "search.epochs.low=1", "--set", "search.epochs.high=2", "--no-progress", "--no-profile"]
# Trials of several seconds even on a fast machine (100 epochs of 90 updates), so that a
# signal lands in the middle of one: at 20 epochs a warm trial took under a second, and a
# study could end before the test saw a trial running.
LONG = ["--set", "search.epochs={choices=[100]}", "--set", "search.batch_size={choices=[16]}",
        "--set", "search.lr={choices=[0.02, 0.03, 0.04]}", "--no-progress", "--no-profile"]


def load(storage: str, name: str = "quick") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def child_runs(client: MlflowClient, study: optuna.Study):
    return client.search_runs([study.user_attrs["mlflow_experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{study.user_attrs['mlflow_parent_run_id']}'")


def start(cwd, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sgdtune.study", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_running_trial(storage: str, proc: subprocess.Popen, min_complete: int = 0, timeout_s: float = 120):
    """The first RUNNING trial (with its worker's pid) once `min_complete` trials are done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = load(storage).get_trials()
        except (KeyError, ValueError, OSError):  # the study is not created yet
            trials = []
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker_pid" in t.user_attrs
                   and "mlflow_run_id" in t.user_attrs]
        if running and done >= min_complete:
            return running[0]
        time.sleep(0.2)
    raise TimeoutError("no running trial")


def test_split_gives_shares_that_differ_by_at_most_one():
    assert split(12, 3) == [4, 4, 4]
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 3) == [1, 1]


def test_a_worker_interrupted_while_it_starts_exits_130_without_a_traceback(tmp_path):
    # The supervisor sends its Ctrl-C on each second until the workers end, so it can land on
    # any line of a worker's start once its handlers are in: here, while it starts its writer.
    script = textwrap.dedent(f"""
        import signal
        from pathlib import Path
        from sgdtune.study import session as session
        from sgdtune.study import workers as workers
        from sgdtune.config import load_experiment

        def starting_the_writer(*args, **kwargs):
            signal.raise_signal(signal.SIGINT)  # the supervisor's signal, on this line
            raise AssertionError("the worker took no handler for SIGINT")

        session.BackgroundTracker = starting_the_writer
        config = load_experiment(Path({str(EXPERIMENTS / "quick.toml")!r}))
        options = session.RunOptions.check(config, mlruns={str(tmp_path / "mlruns")!r})
        spec = workers.WorkerSpec(config, options, parent_run_id=None)
        workers.run_worker(spec, share=1, index=1, threads=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (130, "")


def test_three_workers_share_twelve_trials_on_the_embedded_storage(workdir):
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--n-trials", "12", "--workers", "3", *SHORT, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "locked" not in proc.stderr.lower()
    study = load("mlruns/optuna.journal")
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.number for t in trials}) == 12
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 3
    runs = child_runs(MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db"), study)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}


@pytest.mark.postgres
def test_workers_on_postgresql_and_an_mlflow_server_never_leak_the_password(workdir, postgres, mlflow_server):
    storage = postgres("optuna_workers")
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--n-trials", "12", "--workers", "3",
                   "--storage", storage, "--tracking-uri", mlflow_server, *SHORT, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "postgresql://sgd:***@127.0.0.1" in proc.stdout
    study = load(storage)
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    client = MlflowClient(mlflow_server)
    runs = child_runs(client, study)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert "***" in parent.data.tags["sgdtune.command"]

    everything = [proc.stdout, proc.stderr, json.dumps(study.user_attrs), json.dumps([t.user_attrs for t in trials])]
    for run in [parent, *runs]:
        everything += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    assert not any(PG_PASSWORD in text for text in everything)
    assert not (workdir / "mlruns").exists()  # both stores are remote


@pytest.mark.postgres
def test_with_heartbeats_a_killed_workers_trial_is_failed_and_run_again_by_another(workdir, postgres, mlflow_server):
    storage = postgres("optuna_heartbeat")
    # A live worker's trial must never look dead: its heartbeat thread must get to write within the
    # grace period (2 heartbeats) even on a busy machine, so one torch thread each (no spinning
    # threads beside it) and heartbeats of 2 s. Six trials: the first process must not finish the
    # study's trials while the second still starts (10-20 s on a busy machine), or the second has none to run.
    common = ["experiments/quick.toml", "--n-trials", "6", "--storage", storage, "--tracking-uri", mlflow_server,
              "--heartbeat", "2", "--threads", "1", *LONG]
    first = start(workdir, *common)
    wait_for_running_trial(storage, first)
    second = start(workdir, *common)  # a worker on "another machine" joins the same study
    # Killed once the second runs a trial too, so past its start: a start reclaims a dead
    # process's trial of its own host at once (study/reclaim.py); here the heartbeats must find it.
    deadline = time.monotonic() + 180
    while True:
        running = {t.user_attrs.get("worker_pid"): t for t in load(storage).get_trials()
                   if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs}
        if first.pid in running and second.pid in running:
            victim = running[first.pid]
            break
        assert time.monotonic() < deadline and first.poll() is None and second.poll() is None
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err

    study = load(storage)
    assert study.trials[victim.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 3
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    run = MlflowClient(mlflow_server).get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "heartbeats" in run.data.tags["sgdtune.fail_reason"]


def test_ctrl_c_fails_the_running_trial_cleanly_and_the_study_resumes(workdir):
    # 30 epochs, as in tests/e2e/test_faults.py: one process, whose trial the poll sees within 0.2 s
    args = ["experiments/quick.toml", "--n-trials", "2", "--set", "search.epochs={choices=[30]}", *LONG[2:]]
    proc = start(workdir, *args)
    victim = wait_for_running_trial("mlruns/optuna.journal", proc, min_complete=1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err

    study = load("mlruns/optuna.journal")
    before = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
    assert study.trials[victim.number].state == TrialState.FAIL
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["sgdtune.fail_reason"] == "interrupted (Ctrl-C)"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"

    again = run_cli("sgdtune.study", *args, cwd=workdir)
    assert again.returncode == 0, again.stderr
    trials = load("mlruns/optuna.journal").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    assert {t.number: t.values for t in complete if t.number in before} == before
    assert len({t.number for t in trials}) == len(trials) == len(before) + 1 + (2 - len(before))
    assert not [r for r in child_runs(client, load("mlruns/optuna.journal")) if r.info.status == "RUNNING"]
