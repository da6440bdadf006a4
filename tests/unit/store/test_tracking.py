"""tracking: Tracker finds a study's parent run again or creates it once; RunReader reads runs back."""

from mlflow import MlflowClient
from mlflow.entities import ViewType

from sgdtune.store.run_reader import RunReader, store_exists
from sgdtune.store.tracking import Tracker, default_tracking_uri


def test_two_processes_creating_one_new_study_end_up_under_the_same_parent(tmp_path, monkeypatch):
    uri = default_tracking_uri(tmp_path / "mlruns")
    first, second = Tracker(uri, "s"), Tracker(uri, "s")
    real_find = second.find_parent_run
    looks = []

    def raced():  # the second's first look came before the first had created its run
        looks.append(1)
        return None if len(looks) == 1 else real_find()

    monkeypatch.setattr(second, "find_parent_run", raced)

    a = first.start_parent_run({"sgdtune.command": "a"}, {"seed": 0})
    b = second.start_parent_run({"sgdtune.command": "b"}, {"seed": 0})

    assert b == a
    client = MlflowClient(uri)
    all_runs = client.search_runs([first.experiment_id], run_view_type=ViewType.ALL)
    assert sorted(r.info.lifecycle_stage for r in all_runs) == ["active", "deleted"]
    assert first.find_parent_run() == a


def test_a_resumed_study_finds_its_parent_run_again(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = Tracker(uri, "s")
    run_id = tracker.start_parent_run({}, {"seed": 0})
    tracker.end_parent_run(run_id, {"n_complete": 1})
    again = Tracker(uri, "s").start_parent_run({"sgdtune.command": "again"}, {"seed": 0})
    assert again == run_id
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["sgdtune.command"] == "again"


# -- RunReader: the report's and the UI's reads -------------------------------------------------


def test_store_exists_is_false_only_for_a_missing_sqlite_file(tmp_path):
    assert not store_exists(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "here.db").write_bytes(b"")
    assert store_exists(f"sqlite:///{tmp_path}/here.db")
    assert store_exists("http://127.0.0.1:5000")  # a server answers only when asked


def test_run_reader_reads_a_study_and_creates_nothing(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = Tracker(uri, "s")
    parent = tracker.start_parent_run({"sgdtune.command": "c"}, {"seed": 0})
    runs = [tracker.start_trial_run(parent, n, {"batch_size": 16 * (n + 1)}, {}) for n in range(2)]
    tracker.log_epoch(runs[0], {"val_acc": 0.5}, step=1)
    tracker.log_epoch(runs[0], {"val_acc": 0.6}, step=1)  # a step logged again: its last value counts
    tracker.log_epoch(runs[0], {"val_acc": 0.7}, step=2)
    for run in runs:
        tracker.end_trial_run(run, "COMPLETE", {"final_val_acc": 0.7})
    (tmp_path / "exp.toml").write_text("name = 's'\n")
    tracker.log_artifact(parent, tmp_path / "exp.toml", "experiment")
    MlflowClient(uri).create_experiment("empty")
    before = MlflowClient(uri).search_experiments()

    reader = RunReader(uri)
    record = reader.find_run(parent)
    assert record.run_id == parent and record.experiment_id == tracker.experiment_id
    assert record.params == {"seed": "0"} and record.tags["sgdtune.command"] == "c"
    assert reader.find_run("0" * 32) is None
    children = reader.child_runs(record)
    assert {n: r.run_id for n, r in children.items()} == {0: runs[0], 1: runs[1]}
    assert children[1].params == {"batch_size": "32"} and children[1].metrics == {"final_val_acc": 0.7}
    assert reader.metric_history(runs[0], "val_acc") == {"step": [1, 2], "value": [0.6, 0.7]}
    assert reader.metric_history(runs[1], "val_acc") == {"step": [], "value": []}
    assert reader.read_artifact(parent, "experiment", ".toml") == ("experiment/exp.toml", b"name = 's'\n")
    assert reader.read_artifact(parent, "experiment", ".json") is None
    assert reader.experiments_with_runs() == [(tracker.experiment_id, "s")]  # "empty" holds no run
    assert len(MlflowClient(uri).search_experiments()) == len(before)


# -- runs nested under a trial's run (replicates) -----------------------------------------------


def test_a_stale_trial_run_is_failed_with_its_nested_runs_and_child_runs_list_trials_only(tmp_path):
    uri = default_tracking_uri(tmp_path / "mlruns")
    tracker = Tracker(uri, "s")
    parent = tracker.start_parent_run({}, {"seed": 0})
    trial = tracker.start_trial_run(parent, 3, {"seed": 1}, {"sgdtune.trial_state": "RUNNING"})
    done = tracker.start_child_run(trial, "trial-3-rep-0", {"seed": 1}, {"sgdtune.replicate": 0})
    tracker.log_epoch(done, {"val_acc": 0.5}, step=1)
    tracker.end_trial_run(done, "COMPLETE", {"final_val_acc": 0.5})
    running = tracker.start_child_run(trial, "trial-3-rep-1", {"seed": 2}, {"sgdtune.replicate": 1})

    client = MlflowClient(uri)
    got = client.get_run(running)
    assert got.info.run_name == "trial-3-rep-1" and got.data.tags["mlflow.parentRunId"] == trial
    assert got.data.tags["sgdtune.replicate"] == "1" and got.data.tags["sgdtune.study_name"] == "s"
    assert "sgdtune.trial_number" not in got.data.tags  # find_trial_run finds the trial's own run
    assert tracker.find_trial_run(3) == trial
    assert list(RunReader(uri).child_runs(RunReader(uri).find_run(parent))) == [3]

    assert tracker.fail_stale_run(trial, "worker died")
    assert client.get_run(trial).info.status == "FAILED"
    assert client.get_run(running).info.status == "FAILED"
    assert client.get_run(running).data.tags["sgdtune.fail_reason"] == "worker died"
    assert client.get_run(done).info.status == "FINISHED"  # an ended replicate keeps its ending


# -- runs whose end was lost (a killed writer, a full disk) ----------------------------------------


def test_a_run_left_running_under_a_complete_trial_gets_its_summary_or_ends_failed(tmp_path):
    """A complete trial whose run's end was lost: ended FINISHED with the summary metrics the
    Optuna trial kept (and a tag saying so); without a summary it is not labelled complete."""
    from sgdtune.store.tracking import RECOVERED_NOTE

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "s")
    parent = tracker.start_parent_run({}, {"seed": 0})
    with_summary, without = (tracker.start_trial_run(parent, n, {"batch_size": 16}, {}) for n in (0, 1))
    summary = {"final_val_acc": 0.93, "best_val_acc": 0.95, "updates": 900, "note": "text is not a metric"}
    assert tracker.end_runs_of_finished_trials({0: ("COMPLETE", None, summary), 1: ("COMPLETE", None, {})}) == 2
    run = tracker.client.get_run(with_summary)
    assert (run.info.status, run.data.tags["sgdtune.trial_state"]) == ("FINISHED", "COMPLETE")
    assert run.data.metrics == {"final_val_acc": 0.93, "best_val_acc": 0.95, "updates": 900.0}
    assert run.data.tags["sgdtune.recovered"] == RECOVERED_NOTE
    lost = tracker.client.get_run(without)
    assert (lost.info.status, lost.data.tags["sgdtune.trial_state"]) == ("FAILED", "FAIL")
    assert "its run's metrics were lost" in lost.data.tags["sgdtune.fail_reason"] and not lost.data.metrics


FULL_STORE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))  # a write past 40 kB fails (EFBIG), as on a full disk
from sgdtune.errors import TrackingError
from sgdtune.store.writer import BackgroundTracker
tracker = BackgroundTracker(sys.argv[1], "s")  # its writer process inherits the limit
for number in range(2):
    try:
        run = tracker.start_trial_run(sys.argv[2], number, {"batch_size": 16}, {})
        tracker.log_epoch(run, {"val_acc": 0.5}, step=1)
        tracker.end_trial_run(run, "COMPLETE", {"final_val_acc": 0.5})
    except TrackingError as e:
        print(e)
    for _ in range(3):  # as a trial records its run id (study/trial.py), after its end
        try:
            tracker.run_id(run.key)
        except TrackingError as e:
            print(e)
try:
    tracker.close()
except TrackingError as e:
    print(e)
"""


def test_a_store_that_refuses_writes_is_named_as_the_cause_not_a_later_consequence(tmp_path):
    """Once a run could not be created, the calls on it are not made with no run id (each a
    TypeError 'expected string or bytes-like object'); every error the study says names the
    store's refusal."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = Tracker(uri, "s").start_parent_run({}, {"seed": 0})  # the store, before the disk is full
    out = subprocess.run([sys.executable, "-c", FULL_STORE, uri, parent], capture_output=True, text=True,
                         timeout=120)
    lines = out.stdout.splitlines()
    assert lines, out.stderr
    for line in lines:
        assert line.startswith(("MLflow write failed in the writer process: ", "MLflow run not created")), line
        assert "disk I/O error" in line or "database or disk is full" in line or "File too large" in line, line
        assert "TypeError" not in line and "NoneType" not in line, line
