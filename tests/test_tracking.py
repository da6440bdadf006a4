"""tracking.Tracker: the parent run of a study, found again or created once."""

from mlflow import MlflowClient
from mlflow.entities import ViewType

from sgdtune.tracking import Tracker, default_tracking_uri


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
