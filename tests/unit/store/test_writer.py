"""The MLflow writer process: every write made, ids returned, errors raised, faults survived."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow import MlflowClient

from sgdtune.errors import InputError, TrackingError
from sgdtune.store import writer as writer
from sgdtune.store import writer_child
from sgdtune.store.tracking import default_tracking_uri
from sgdtune.store.writer import BackgroundTracker


def one_trial(tracker: BackgroundTracker, epochs: int = 3):
    parent = tracker.start_parent_run({"sgdtune.command": "test"}, {"seed": 0})
    run = tracker.start_trial_run(parent, 0, params={"batch_size": 32, "lr": 0.1}, tags={"sgdtune.device": "cpu"})
    for epoch in range(1, epochs + 1):
        tracker.log_epoch(run, {"val_acc": epoch / 10, "train_loss": 1.0 / epoch}, step=epoch)
    return parent, run


def test_every_write_reaches_the_store_and_ids_come_back(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = BackgroundTracker(uri, "s")
    parent, run = one_trial(tracker)
    tracker.end_trial_run(run, "COMPLETE", {"final_val_acc": 0.3})
    tracker.end_parent_run(parent, {"n_complete": 1})
    tracker.close()

    client = MlflowClient(uri)
    got = client.get_run(run.id)
    assert got.info.experiment_id == tracker.experiment_id
    assert got.info.status == "FINISHED" and got.data.tags["mlflow.parentRunId"] == parent.id
    assert got.data.params == {"batch_size": "32", "lr": "0.1"}
    assert [m.value for m in client.get_metric_history(run.id, "val_acc")] == pytest.approx([0.1, 0.2, 0.3])
    assert got.data.metrics["final_val_acc"] == pytest.approx(0.3)
    assert client.get_run(parent.id).data.metrics["n_complete"] == 1


def test_a_run_nested_under_a_trial_run_gets_its_id_params_epochs_and_end(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = BackgroundTracker(uri, "s")
    parent, run = one_trial(tracker, epochs=1)
    rep = tracker.start_child_run(run, "trial-0-rep-1", params={"seed": 7}, tags={"sgdtune.replicate": 1})
    tracker.log_epoch(rep, {"val_acc": 0.4}, step=1)
    tracker.end_trial_run(rep, "COMPLETE", {"final_val_acc": 0.4})
    tracker.end_trial_run(run, "COMPLETE", {"final_val_acc": 0.4, "final_val_acc_std": 0.0})
    tracker.close()

    got = MlflowClient(uri).get_run(rep.id)
    assert got.info.run_name == "trial-0-rep-1" and got.info.status == "FINISHED"
    assert got.data.tags["mlflow.parentRunId"] == run.id and got.data.tags["sgdtune.replicate"] == "1"
    assert got.data.params == {"seed": "7"} and got.data.metrics == {"val_acc": 0.4, "final_val_acc": 0.4}


def test_a_failed_write_is_raised_at_close_and_the_process_serves_the_next_study(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = BackgroundTracker(uri, "s")
    parent, run = one_trial(tracker, epochs=1)
    tracker.end_trial_run(run, "NOT-A-STATE", {})  # Tracker.end_trial_run raises KeyError in the child
    with pytest.raises(TrackingError, match="MLflow write failed in the writer process: KeyError: 'NOT-A-STATE'"):
        tracker.close()

    again = BackgroundTracker(uri, "s")  # the same child process, reused
    _, run2 = one_trial(again, epochs=2)
    again.end_trial_run(run2, "PRUNED", {})
    again.close()
    assert MlflowClient(uri).get_run(run2.id).info.status == "KILLED"


def test_the_writer_ignores_ctrl_c_and_goes_on(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = BackgroundTracker(uri, "s")
    parent, run = one_trial(tracker, epochs=1)
    assert tracker.experiment_id  # the child is up and serving
    tracker._child.proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the whole group
    # A reply to a message sent after the signal: the child has taken the signal by then.
    assert tracker.start_trial_run(parent, 1, params={}, tags={}).id
    assert tracker._child.proc.poll() is None
    tracker.end_trial_run(run, "FAIL", {}, fail_reason="interrupted (Ctrl-C)")
    tracker.close()
    got = MlflowClient(uri).get_run(run.id)
    assert got.info.status == "FAILED" and got.data.tags["sgdtune.fail_reason"] == "interrupted (Ctrl-C)"


def test_a_killed_training_process_loses_nothing_it_sent(tmp_path):
    """kill -9 of the training process: its pipe closes, and the writer makes every write it
    was sent before exiting (a trial's epochs up to the kill, the run left RUNNING)."""
    uri = default_tracking_uri(tmp_path / "mlruns")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from sgdtune.store.writer import BackgroundTracker
        tracker = BackgroundTracker({uri!r}, "s")
        parent = tracker.start_parent_run({{}}, {{}})
        run = tracker.start_trial_run(parent, 0, params={{"lr": 0.1}}, tags={{}})
        for epoch in range(1, 6):
            tracker.log_epoch(run, {{"val_acc": epoch / 10}}, step=epoch)
        print(tracker._child.proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "the writer process outlived its pipe"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.`sgdtune.trial_number` = '0'")
    assert run.info.status == "RUNNING"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4, 0.5])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def test_prestart_is_taken_by_the_first_tracker(tmp_path):
    writer_child.drop_spare()
    writer_child.prestart()
    started = writer_child._spare
    tracker = BackgroundTracker(default_tracking_uri(tmp_path / "mlruns"), "s")
    assert tracker._child is started and writer_child._spare is None
    tracker.close()
    assert writer_child._spare is started  # handed back for the next study


def test_run_creations_jump_the_queue_but_not_a_studys_open_or_close():
    from multiprocessing import Pipe

    from sgdtune.store.writer_process import _in_order

    receive, send = Pipe(duplex=False)
    sent = [("open", "cwd", "uri", "s", None),
            ("call", "log_epoch", (0, {}, 1), (0,), None),
            ("call", "end_trial_run", (0, "COMPLETE", {}, None), (0,), None),
            ("call", "start_trial_run", ("p", 1, {}, {}), (), 1),
            ("close",),
            ("call", "start_trial_run", ("p", 2, {}, {}), (), 2)]
    for message in sent:
        send.send(message)
    send.close()
    got = [m[1] if m[0] == "call" else m[0] for m in _in_order(receive)]
    assert got == ["open", "start_trial_run", "log_epoch", "end_trial_run", "close", "start_trial_run"]


def test_a_store_that_cannot_be_opened_is_raised_at_every_wait_and_never_hangs(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    tracker = BackgroundTracker(f"sqlite:///{tmp_path}/a-file/mlflow.db", "s")
    parent, run = one_trial(tracker, epochs=1)
    for _ in range(2):  # the same answer each time, not a wait for an id that never comes
        with pytest.raises(InputError, match="--tracking-uri: must be a tracking store MLflow can open; got 'sqlite:"):
            _ = run.id
    with pytest.raises(InputError):
        tracker.close()
