"""Faults: kill -9 and SIGTERM of each process of a study (the single training process, the
`--workers` supervisor, a worker, the MLflow writer) at several points, and a store that
refuses writes; then the same command again. After it: no finished trial lost, no trial or
run RUNNING (Optuna and MLflow, the parent included), each trial number one MLflow run, no
parameter set finished twice, and the study has its n_trials.

Each fault adds a row to a table (fault, runs, finished trials lost, runs left RUNNING,
duplicates), appended to the file named by SGDTUNE_FAULT_TABLE (a Markdown table).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from mlflow import MlflowClient
from optuna.trial import TrialState

from sgdtune.search.strategy import counts_as_finished
from sgdtune.store.stores import open_storage

STORAGE = "mlruns/optuna.journal"
# Trials of a second or two (30 epochs of 90 updates, no noise or sharpness probes), so that a
# signal can land inside one; lr continuous, so that two trials never share a parameter set
# by chance. One thread per process: on a busy machine torch's spinning threads cost 5x more.
# No device profile: no fault here is about it, and each new study would time it.
TRIALS = ["--set", "search.epochs={choices=[30]}", "--set", "search.batch_size={choices=[16]}",
          "--set", "train.probe_size=0", "--set", "train.sharpness_every=0", "--no-progress", "--no-profile"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def table_row(fault: str, runs: int, lost: int, running: int, dups: int) -> None:
    """A row of the fault table, appended as the test ends: this file's tests are spread over
    pytest-xdist's workers, so no one of them sees every row."""
    if not os.environ.get("SGDTUNE_FAULT_TABLE"):
        return
    with open(os.environ["SGDTUNE_FAULT_TABLE"], "a") as table:
        if table.tell() == 0:
            table.write("| fault | runs | finished trials lost | runs left RUNNING | duplicates |\n"
                        "|---|---|---|---|---|\n")
        table.write(f"| {fault} | {runs} | {lost} | {running} | {dups} |\n")


def command(n_trials: int, *extra: str) -> list[str]:
    return ["experiments/quick.toml", "--n-trials", str(n_trials), *TRIALS, *extra]


def start(cwd: Path, args: list[str], **kw) -> subprocess.Popen:
    """The study command in its own session (a group signal reaches it and its children only)."""
    env = {**os.environ, **ENV}
    return subprocess.Popen([sys.executable, "-m", "sgdtune.study", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def trials(storage: str = STORAGE) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="quick", storage=open_storage(storage)).get_trials()
    except (KeyError, ValueError, OSError):  # not created yet
        return []


def wait_for(proc: subprocess.Popen, pick, timeout_s: float = 180):
    """pick(trials) once it returns something (polled every 0.1 s: a read of the journal costs
    about 13 ms of CPU on a busy machine, and the trials here last a second or more)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the study ended first: {proc.communicate()}")
        got = pick(trials())
        if got:
            return got
        time.sleep(0.1)
    raise TimeoutError("nothing to pick")


def running(ts, with_run: bool = False):
    """The first trial RUNNING in a process (with its MLflow run id recorded, if with_run)."""
    found = [t for t in ts if t.state == TrialState.RUNNING and "process" in t.user_attrs
             and (not with_run or "mlflow_run_id" in t.user_attrs)]
    return found[0] if found else None


def finished(ts) -> dict[int, tuple]:
    return {t.number: (t.state, t.values) for t in ts if counts_as_finished(t)}


def gone(pid: int, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def check(workdir: Path, fault: str, before: dict[int, tuple], n_trials: int) -> None:
    """After the resume: the closing assertions of every fault, and its row in the table."""
    ts = trials()
    now = finished(ts)
    lost = sum(now.get(n) != v for n, v in before.items())
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("quick").experiment_id
    runs = client.search_runs([experiment], max_results=5000)
    left_running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    # a run labelled complete has its metrics (one whose end was lost gets its trial's summary)
    bare = [r.info.run_name for r in runs if r.data.tags.get("sgdtune.trial_state") == "COMPLETE"
            and "final_val_acc" not in r.data.metrics]
    (parent,) = [r.info.run_id for r in runs if r.data.tags.get("sgdtune.role") == "study"]
    per_trial = Counter(r.data.tags["sgdtune.trial_number"] for r in runs  # a study --fresh replaced keeps its own
                        if "sgdtune.trial_number" in r.data.tags and r.data.tags["mlflow.parentRunId"] == parent)
    params = Counter(tuple(sorted(t.params.items())) for t in ts if counts_as_finished(t))
    dups = sum(c - 1 for c in per_trial.values() if c > 1) + sum(c - 1 for c in params.values() if c > 1)
    table_row(fault, 1, lost, len(left_running), dups)
    assert lost == 0, (before, now)
    assert not left_running, left_running
    assert not bare, bare
    assert not [t.number for t in ts if t.state == TrialState.RUNNING]
    assert dups == 0, (per_trial, params)
    assert len(now) >= n_trials
    assert all(per_trial[str(n)] == 1 for n in now)  # each finished trial has its run
    assert all(t.user_attrs.get("fail_reason") for t in ts if t.state == TrialState.FAIL)


def resume(workdir: Path, args: list[str], **kw) -> subprocess.CompletedProcess:
    again = run_cli("sgdtune.study", *args, cwd=workdir, timeout=400, env=ENV, **kw)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr, again.stderr
    return again


def one_line(err: str, expected: str) -> None:
    assert "Traceback" not in err, err
    assert expected in err, err


# -- the single training process ------------------------------------------------------------


@pytest.mark.parametrize("how", ["mid-trial", "at the first trial's start"])
def test_kill_9_of_the_training_process_then_resume(workdir, how):
    args = command(2)
    proc = start(workdir, args)
    if how == "mid-trial":
        victim = wait_for(proc, lambda ts: running(ts, with_run=True))
        os.kill(proc.pid, signal.SIGKILL)  # its writer lives on, writes what it was sent, exits
    else:  # the run may not exist yet; the writer dies too (the whole group)
        victim = wait_for(proc, running)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    before = finished(trials())
    resume(workdir, args)
    killed = trials()[victim.number]
    assert killed.state == TrialState.FAIL and "died during the trial" in killed.user_attrs["fail_reason"]
    retry = [t for t in trials() if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and killed.params.items() <= retry[0].params.items()  # killed as it drew them
    check(workdir, f"kill -9, training process, {how}", before, 2)


def test_sigterm_of_the_training_process_mid_trial_and_between_trials_then_resume(workdir):
    args = command(3)
    proc = start(workdir, args)
    victim = wait_for(proc, lambda ts: running(ts, with_run=True))
    proc.send_signal(signal.SIGTERM)  # the process alone (Kubernetes)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    one_line(err, "interrupted (SIGTERM): finished trials are kept; run the same command again to resume.")
    t = trials()[victim.number]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted (SIGTERM)"
    run = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").get_run(t.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["sgdtune.fail_reason"] == "interrupted (SIGTERM)"
    before = finished(trials())
    resume(workdir, args)
    check(workdir, "SIGTERM, training process, mid-trial", before, 3)

    args = command(5)
    proc = start(workdir, args)
    wait_for(proc, lambda ts: len(finished(ts)) > len(before) + 1 and running(ts))  # a trial ended: next one
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, writer included (systemd, `timeout`)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    one_line(err, "interrupted (SIGTERM)")
    before = finished(trials())
    resume(workdir, args)
    check(workdir, "SIGTERM to the group, training process, between trials", before, 5)


# SIGTERM (or Ctrl-C) as a trained trial is being written: sent by the process to itself from
# inside TrialJob.finish, after the trial's run has ended, before Optuna has been told.
AS_IT_ENDS = """
import os, signal, sys
from sgdtune.study import trial as trial
from sgdtune.cli import interruptible, study_main
keep = trial.TrialJob._keep_model
def keep_then_signal(self, ending):
    keep(self, ending)
    if self.trial.number == 1:
        os.kill(os.getpid(), signal.{sig})
trial.TrialJob._keep_model = keep_then_signal
sys.argv = ["sgdtune.study", *sys.argv[1:]]
sys.exit(interruptible(study_main))
"""


@pytest.mark.parametrize("sig, status, extra", [("SIGTERM", 143, []), ("SIGINT", 130, []),
                                               ("SIGTERM", 143, ["--batch-trials", "2"])])
def test_a_signal_as_a_trained_trial_is_being_written_keeps_it_complete(workdir, sig, status, extra):
    args = command(3, "--set", "search.epochs={choices=[2]}", *extra)
    done = subprocess.run([sys.executable, "-c", AS_IT_ENDS.format(sig=sig), *args], cwd=workdir,
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300)
    assert done.returncode == status, done.stderr
    one_line(done.stderr, "finished trials are kept")
    ts = trials()
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 2, [(t.state, t.user_attrs.get("fail_reason")) for t in ts]
    run = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").get_run(ts[1].user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    before = finished(ts)
    resume(workdir, args)
    check(workdir, f"{sig} as a trained trial is written {' '.join(extra)}".strip(), before, 3)


# -- the MLflow writer process ----------------------------------------------------------------


def test_kill_9_of_the_writer_ends_the_runs_from_the_training_process_and_sigterm_is_ignored(workdir):
    args = command(2)
    proc = start(workdir, args)
    victim = wait_for(proc, lambda ts: running(ts, with_run=True))
    os.kill(victim.user_attrs["process"]["writer_pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    one_line(err, "error: the MLflow writer process")
    assert "died (signal SIGKILL); this study's runs were ended from the training process" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    # The trial in training fails, or (the writer killed as it ended) completes, its end made
    # directly, and the next one fails as it starts.
    (t,) = [t for t in trials() if "MLflow writer process" in t.user_attrs.get("fail_reason", "")]
    assert t.state == TrialState.FAIL and t.number >= victim.number
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    if t.number == victim.number:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    experiment = client.get_experiment_by_name("quick").experiment_id
    assert not [r for r in client.search_runs([experiment]) if r.info.status == "RUNNING"]  # parent too
    before = finished(trials())
    resume(workdir, args)
    check(workdir, "kill -9, writer process, mid-trial", before, 2)

    args = command(4)
    proc = start(workdir, args)
    victim = wait_for(proc, lambda ts: running(ts, with_run=True))
    os.kill(victim.user_attrs["process"]["writer_pid"], signal.SIGTERM)  # ignored: its pipe decides
    before = finished(trials())
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    check(workdir, "SIGTERM, writer process, mid-trial (ignored)", before, 4)


# -- worker processes and their supervisor ---------------------------------------------------


def worker_pids(ts) -> set[int]:
    return {t.user_attrs["process"]["pid"] for t in ts if "process" in t.user_attrs}


def test_sigterm_and_kill_9_of_the_supervisor_leave_no_worker_running(workdir):
    """SIGTERM of the `--workers` supervisor, then kill -9 of the supervisor of the start that
    resumes it (with two trials more); the start after that completes the study, and nothing
    either fault ended is lost."""
    args = command(4, "--workers", "2")
    proc = start(workdir, args)
    wait_for(proc, lambda ts: len([t for t in ts if running([t])]) == 2)
    proc.send_signal(signal.SIGTERM)  # the supervisor alone: it forwards to its workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    one_line(err, "interrupted (SIGTERM)")
    assert all(gone(pid, 5) for pid in worker_pids(trials()))
    after_sigterm = finished(trials())

    args = command(6, "--workers", "2")
    proc = start(workdir, args)
    wait_for(proc, lambda ts: len(finished(ts)) > len(after_sigterm) and running(ts, with_run=True))
    os.kill(proc.pid, signal.SIGKILL)  # nothing forwarded: the workers see their parent go
    proc.communicate(timeout=60)
    pids = worker_pids(trials())
    assert all(gone(pid) for pid in pids), "a worker outlived its supervisor"
    before = finished(trials())
    resume(workdir, args)
    check(workdir, "SIGTERM, --workers supervisor, mid-trial", after_sigterm, 6)
    check(workdir, "kill -9, --workers supervisor, mid-trial", before, 6)


def test_kill_9_of_a_worker_is_replaced_and_the_study_completes(workdir):
    args = command(3, "--workers", "2")
    proc = start(workdir, args)
    victim = wait_for(proc, lambda ts: running(ts, with_run=True))
    before = finished(trials())
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    t = trials()[victim.number]
    assert t.state == TrialState.FAIL and "died (signal SIGKILL)" in t.user_attrs["fail_reason"]
    retry = [r for r in trials() if r.user_attrs.get("retry_of") == victim.number]
    # its parameters run again to their end (COMPLETE, or FAIL as diverged: lr reaches 0.2 here)
    assert len(retry) == 1 and retry[0].params == t.params and counts_as_finished(retry[0])
    run = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").get_run(t.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "died (signal SIGKILL)" in run.data.tags["sgdtune.fail_reason"]
    check(workdir, "kill -9, a worker, mid-trial", before, 3)


# -- a store that refuses writes ----------------------------------------------------------------


def limit_file_size(limit: int):
    def apply() -> None:  # in the child, before exec: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_store_that_refuses_writes_stops_the_study_with_one_line_and_exit_2(workdir):
    """A full disk, played by RLIMIT_FSIZE: in the study's processes (training, writer), any
    write that would grow a file past the limit fails with EFBIG, as ENOSPC would."""
    args = command(1)
    resume(workdir, args)  # the stores exist, at their sizes after one trial
    sizes = {p.name: p.stat().st_size for p in (workdir / "mlruns").iterdir() if p.is_file()}
    args = command(6)
    proc = start(workdir, args, preexec_fn=limit_file_size(max(sizes.values()) + 40_000))
    before = finished(trials())
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 2, err
    one_line(err, "error: ")
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Optuna storage" in line or "store sqlite:///" in line, line
    assert "run the same command again to resume" in line
    # the line names the store's refusal (EFBIG here, ENOSPC on a full disk), not a consequence of it
    assert any(cause in line for cause in ("disk I/O error", "database or disk is full", "File too large")), line
    assert "TypeError" not in line and "NoneType" not in line, line
    resume(workdir, args)
    check(workdir, "file size limit (a full disk), training process", before, 6)


# -- processes that start one study together, and --fresh beside a running study --------------

# Trials of a fraction of a second: what is counted here is the start, not the training.
SHORT = ["--set", "search.epochs={choices=[2]}", "--set", "search.batch_size={choices=[64, 256]}",
         "--set", "train.probe_size=0", "--set", "train.sharpness_every=0", "--set", "keep_models=0",
         "--no-progress", "--no-profile"]


def start_together(cwd: Path, name: str, configs: list[list[str]], storage: str, n_trials: int,
                   hold: str | None = None, hold_s: float = 0.0, extra: tuple = ("--no-tracking",)):
    """Start one process per entry of `configs` (extra --set flags) on study `name`, while
    the test holds `hold` ("start": sgdtune's start lock; "journal": Optuna's journal lock)
    for `hold_s` seconds; their (exit status, stderr), in order."""
    from sgdtune.store.startlock import file_lock

    args = ["experiments/quick.toml", "--study-name", name, "--n-trials", str(n_trials), "--storage", storage,
            *SHORT, *extra]
    procs = []
    (cwd / storage).parent.mkdir(parents=True, exist_ok=True)
    if hold == "journal":
        lock = optuna.storages.journal.JournalFileOpenLock(str(cwd / storage))
        lock.acquire()
        procs = [start(cwd, [*args, *c]) for c in configs]
        time.sleep(hold_s)
        lock.release()
    elif hold == "start":
        with file_lock(cwd / storage, storage):
            procs = [start(cwd, [*args, *c]) for c in configs]
            time.sleep(hold_s)
    else:
        procs = [start(cwd, [*args, *c]) for c in configs]
    outs = [p.communicate(timeout=300) for p in procs]
    return procs, [(p.returncode, err) for p, (_, err) in zip(procs, outs)]


def study_counts(storage, name: str, procs, configs) -> dict:
    """Mixed configurations (finished trials run by a process of a configuration other than
    the recorded one), duplicate parameter sets, finished trials, surplus trials."""
    import json

    study = optuna.load_study(study_name=name, storage=storage)
    recorded = json.loads(study.user_attrs["config_json"])["train"]["momentum"]
    momentum = {p.pid: (0.0 if "train.momentum=0.0" in c else 0.9) for p, c in zip(procs, configs)}
    done = [t for t in study.get_trials() if counts_as_finished(t)]
    params = Counter(tuple(sorted(t.params.items())) for t in done)
    return {
        "mixed": sum(momentum[t.user_attrs["process"]["pid"]] != recorded for t in done),
        "duplicates": sum(c - 1 for c in params.values()),
        "finished": len(done),
        "surplus": sum(t.user_attrs.get("fail_kind") == "surplus" for t in study.get_trials()),
        "running": sum(t.state == TrialState.RUNNING for t in study.get_trials()),
        "recorded": recorded,
    }


def race(cwd: Path, storage: str, rounds: list[int], n_trials: int = 3, seed: int = 0):
    """Rounds of 2-4 processes started together on a new study each (every other round with
    two configurations), the start lock or the journal lock held for a random while; the
    totals of study_counts over the rounds, and the number of starts."""
    import random

    rng = random.Random(seed)
    totals = Counter()
    for r, k in enumerate(rounds):
        mixed = r % 2 == 1
        configs = [["--set", "train.momentum=0.0"] if mixed and i % 2 else [] for i in range(k)]
        hold = rng.choice(["start", "journal", None]) if "://" not in storage else None
        procs, results = start_together(cwd, f"race{r}", configs, storage, n_trials, hold, rng.uniform(0, 4))
        counts = study_counts(open_storage(storage), f"race{r}", procs, configs)
        for (code, err), c in zip(results, configs):
            same = (0.0 if c else 0.9) == counts["recorded"]
            assert code == (0 if same else 2), (r, code, err)
            assert "Traceback" not in err, err
            if not same:  # one line, and nothing written: the study's record is the winner's
                assert "run with another configuration" in err, err
        assert counts["finished"] == n_trials and counts["running"] == 0, (r, counts)
        totals.update({k: v for k, v in counts.items() if k != "recorded"})
    return totals, sum(rounds)


def test_processes_started_together_on_one_study_never_mix_configurations_nor_draw_the_same_trial(workdir):
    """2-4 processes per round, 21 starts: half the rounds with two configurations (one wins,
    the others exit 2 before writing), the locks held and released at random."""
    totals, starts = race(workdir, STORAGE, [3, 2, 4, 3, 2, 4, 3])
    table_row(f"{starts} starts, 2-4 processes together, locks held at random", starts, 0, totals["running"],
              totals["mixed"] + totals["duplicates"])
    assert starts >= 20
    assert totals["mixed"] == 0 and totals["duplicates"] == 0, totals
    assert totals["finished"] == 3 * 7  # exactly n_trials in each study: a surplus trial is not counted


@pytest.mark.postgres
def test_processes_started_together_on_postgresql_never_mix_nor_draw_the_same_trial(workdir, postgres):
    url = postgres("faults_race")
    totals, starts = race(workdir, url, [3, 3])
    assert totals["mixed"] == 0 and totals["duplicates"] == 0 and totals["finished"] == 6, totals


def parent_runs(workdir: Path, name: str = "quick") -> list:
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(name).experiment_id
    return [r for r in client.search_runs([experiment]) if r.data.tags.get("sgdtune.role") == "study"]


def test_processes_started_together_in_a_fresh_folder_create_the_mlflow_store_once(workdir):
    """Three processes with MLflow tracking in an empty folder: the store's tables are made
    once (no "must be a tracking store MLflow can open"), one parent run, n_trials trials."""
    configs = [[], [], []]
    procs, results = start_together(workdir, "quick", configs, STORAGE, 4, extra=())
    assert [code for code, _ in results] == [0, 0, 0], [err for _, err in results]
    counts = study_counts(open_storage(STORAGE), "quick", procs, configs)
    assert counts["finished"] == 4 and counts["duplicates"] == 0, counts
    assert len(parent_runs(workdir)) == 1
    check(workdir, "3 processes together in a fresh folder (MLflow store created once)", {}, 4)
    assert len(finished(trials())) == 4


def test_fresh_is_refused_while_another_process_runs_the_study(workdir):
    """Three `--fresh` starts at once beside a running study: each refused in one line, the
    study untouched; then the running one is stopped and the same command completes it."""
    args = command(500, "--set", "keep_models=0")  # runs until stopped below
    proc = start(workdir, args)
    wait_for(proc, lambda ts: running(ts, with_run=True))
    fresh = [start(workdir, [*args, "--fresh"]) for _ in range(3)]
    for p in fresh:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err
        one_line(err, "error: --fresh: cannot replace study 'quick' while a process runs it")
        assert f"pid {proc.pid} on" in err
    assert proc.poll() is None, "the running study was cut off"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    before = finished(trials())
    n = len(before) + 1
    resume(workdir, command(n, "--set", "keep_models=0"))
    assert len(parent_runs(workdir)) == 1
    check(workdir, "--fresh (3 at once) beside a running study: refused", before, n)
    assert len(finished(trials())) == n


def test_runs_of_a_study_replaced_by_fresh_are_never_ended_as_the_new_studys_trials(workdir):
    args = command(2, "--set", "keep_models=0")
    proc = start(workdir, args)
    victim = wait_for(proc, lambda ts: running(ts, with_run=True))
    os.killpg(proc.pid, signal.SIGKILL)  # the writer too: its run stays RUNNING
    proc.communicate(timeout=60)
    resume(workdir, [*args, "--fresh"])
    resume(workdir, command(3, "--set", "keep_models=0"))  # the next start ends lost runs of *this* study
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    killed = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed.info.status == "FAILED", killed.info.status
    assert killed.data.tags["sgdtune.trial_state"] == "FAIL"
    assert "replaced (--fresh)" in killed.data.tags["sgdtune.fail_reason"]
    check(workdir, "kill -9 mid-trial, then --fresh, then resume", {}, 3)


def test_a_process_whose_study_is_deleted_under_it_stops_with_one_line_and_no_run_running(workdir):
    """What `--fresh` from another host (which cannot see this process) would do."""
    args = command(6, "--set", "keep_models=0")
    proc = start(workdir, args)
    wait_for(proc, lambda ts: running(ts, with_run=True))
    optuna.delete_study(study_name="quick", storage=open_storage(STORAGE))
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 2, err
    one_line(err, "error: study 'quick' was deleted from the Optuna storage while this process ran it")
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    left = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    table_row("study deleted under a running process", 1, 0, len(left), 0)
    assert not left, left


# -- a full disk under the Optuna storage alone ----------------------------------------------------


def test_an_optuna_storage_that_refuses_writes_stops_with_one_line_and_the_resume_loses_nothing(workdir):
    """The journal alone runs out of room: once the first trial runs, the training process
    (not its MLflow writer, started before) may grow no file past the journal's size + 3 KB."""
    args = command(8, "--set", "keep_models=0")
    proc = start(workdir, args, preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    wait_for(proc, lambda ts: running(ts, with_run=True))
    limit = (workdir / STORAGE).stat().st_size + 3000
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    before = finished(trials())
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 2, err
    one_line(err, "error: the Optuna storage")
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    resume(workdir, args)
    check(workdir, "Optuna journal refuses writes (file size limit), then resume", before, 8)


def test_a_trial_left_running_by_a_process_that_died_before_recording_itself_is_reclaimed(workdir):
    resume(workdir, command(1, "--set", "keep_models=0"))
    ask = ("import optuna; from sgdtune.store.stores import open_storage; "
           f"optuna.load_study(study_name='quick', storage=open_storage({STORAGE!r})).ask()")
    subprocess.run([sys.executable, "-c", ask], cwd=workdir, check=True)  # a trial, then the process is gone
    (orphan,) = [t for t in trials() if t.state == TrialState.RUNNING]
    assert "process" not in orphan.user_attrs
    before = finished(trials())
    resume(workdir, command(2, "--set", "keep_models=0"))
    t = trials()[orphan.number]
    assert t.state == TrialState.FAIL and "before recording itself" in t.user_attrs["fail_reason"]
    check(workdir, "a trial RUNNING with no process record (its process died as it began)", before, 2)
