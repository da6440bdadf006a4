"""A study's identity (sgdtune/study/identity.py): the configuration it was started with is
recorded, a changed one is refused before anything is written, and --fresh / --extend are
the two ways on. Real CLI, journal storage and MLflow store, on a study of tiny trials."""

import json
import re

import optuna
import pytest
from conftest import run_cli, write_experiment
from mlflow import MlflowClient
from mlflow.entities import ViewType

from sgdtune.cli import study_main
from sgdtune.config import load_experiment
from sgdtune.errors import InputError
from sgdtune.search.strategy import open_study
from sgdtune.store.stores import locations, open_storage
from sgdtune.study.identity import CHANGES_ATTR, canonical_json, config_diff, diff, fingerprint
from sgdtune.study.run import run_study

TINY = """name = "tiny"
seed = 0
n_trials = 2

[data]
dataset = "digits"

[model]
hidden = [8]

[train]
momentum = 0.9
budget = "epochs"
epochs = 1
probe_size = 0
sharpness_every = 0

[search.batch_size]
choices = [256, 1024]

[search.lr]
low = 0.05
high = 0.2
log = true

[sampler]
name = "random"

[pruner]
name = "none"
"""
REFUSED = "train.momentum: 0.9 -> 0.0"


def load_tiny(cwd, **overrides):
    return load_experiment(cwd / "tiny.toml", **overrides)


def stored(cwd, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(cwd / "mlruns/optuna.journal")))


def mlflow_runs(cwd, name: str = "tiny"):
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)


def parents(runs, role: str = "study"):
    return [r for r in runs if r.data.tags.get("sgdtune.role") == role]


@pytest.fixture(scope="module")
def tiny_cli(tmp_path_factory):
    """One `python -m sgdtune.study tiny.toml` (two trials) in a fresh directory."""
    cwd = tmp_path_factory.mktemp("identity")
    write_experiment(cwd / "tiny.toml", TINY)
    proc = run_cli("sgdtune.study", "tiny.toml", "--no-progress", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, proc


def test_the_study_records_its_configuration_and_sha256(tiny_cli):
    cwd, proc = tiny_cli
    study = stored(cwd)
    config = load_tiny(cwd)
    assert study.user_attrs["config_json"] == canonical_json(config)
    assert study.user_attrs["config_sha256"] == fingerprint(config)
    recorded = json.loads(study.user_attrs["config_json"])
    assert recorded["train"]["momentum"] == 0.9 and recorded["seed"] == 0
    assert recorded["search"]["lr"] == {"low": 0.05, "high": 0.2, "log": True, "step": None, "choices": None,
                                         "stratify": False}
    # What does not change a trial's computation is not part of it; a searched [train] value neither.
    assert not {"name", "n_trials", "timeout_s", "storage", "tracking_uri", "device"} & set(recorded)
    assert "lr" not in recorded["train"] and "batch_size" not in recorded["train"]
    assert fingerprint(load_tiny(cwd, n_trials=9, name="other", device="cpu")) == fingerprint(config)
    _, runs = mlflow_runs(cwd)
    assert parents(runs)[0].data.tags["sgdtune.config_sha256"] == fingerprint(config)
    assert "resuming" not in proc.stderr  # a new study is not resumed


def test_a_changed_set_on_an_existing_study_exits_2_naming_the_change_and_writes_nothing(tiny_cli):
    cwd, _ = tiny_cli
    before = len(stored(cwd).trials), len(mlflow_runs(cwd)[1])
    proc = run_cli("sgdtune.study", "tiny.toml", "--no-progress", "--n-trials", "3",
                   "--set", "train.momentum=0.0", cwd=cwd)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: study 'tiny': has 2 trials run with another configuration")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().endswith(f"; got {REFUSED}")
    for way in ("--study-name", "--fresh", "--extend"):
        assert way in proc.stderr
    assert (len(stored(cwd).trials), len(mlflow_runs(cwd)[1])) == before == (2, 3)


def test_the_api_refuses_a_changed_configuration_naming_on_change_not_the_flags(tiny_cli):
    cwd, _ = tiny_cli
    config = load_tiny(cwd, seed=1, **{"search.lr.high": 0.3})
    with pytest.raises(InputError) as e:
        run_study(config, mlruns=cwd / "mlruns")
    assert e.value.got == "seed: 0 -> 1, search.lr.high: 0.2 -> 0.3"
    assert "on_change='fresh'" in str(e.value) and "on_change='extend'" in str(e.value)
    assert not any(flag in str(e.value) for flag in ("--study-name", "--fresh", "--extend"))  # no CLI words
    with pytest.raises(InputError, match="on_change: must be one of 'refuse', 'fresh', 'extend'; got 'yes'"):
        run_study(config, mlruns=cwd / "mlruns", on_change="yes")
    assert len(stored(cwd).trials) == 2


def test_rerunning_the_same_command_says_it_resumes_and_how_far(tiny_cli):
    cwd, _ = tiny_cli
    proc = run_cli("sgdtune.study", "tiny.toml", "--no-progress", "--n-trials", "2", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "resuming tiny: 2 of 2 trials finished; nothing to run (a larger --n-trials runs more)" in proc.stderr
    assert len(stored(cwd).trials) == 2


def test_the_objectives_are_the_studys_metric_names(tiny_cli, tmp_path):
    cwd, _ = tiny_cli
    assert stored(cwd).metric_names == ["val_acc"]
    two = load_tiny(cwd, objectives=["val_acc", "compute_time_s"], name="pareto")
    storage = open_storage(str(tmp_path / "optuna.journal"))
    open_study(two, storage)
    assert optuna.load_study(study_name="pareto", storage=storage).metric_names == ["val_acc", "compute_time_s"]


@pytest.mark.parametrize("key,value", [("train.lr", "0.1"), ("train.batch_size", "32")])
def test_set_on_a_searched_value_exits_2_naming_the_key_and_its_search_table(workdir, capsys, key, value):
    path = write_experiment(workdir / "tiny.toml", TINY)
    assert study_main([str(path), "--no-progress", "--set", f"{key}={value}"]) == 2
    name = key.split(".")[1]
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}: is searched ([search.{name}])")
    assert f"change [search.{name}] instead" in err and err.rstrip().endswith(f"got {value}")
    assert not (workdir / "mlruns").exists()
    with pytest.raises(InputError, match=re.escape(f"{key}: is searched")):
        load_experiment(path, **{key: 0.5})
    assert load_experiment(path, **{"train.momentum": 0.5}).train.momentum == 0.5  # not searched: fine


def test_fresh_deletes_the_study_and_starts_a_new_parent_run_the_old_runs_stay(workdir, capsys):
    path = write_experiment(workdir / "tiny.toml", TINY)
    first = run_study(load_tiny(workdir, n_trials=1))
    old_parent = first.user_attrs["mlflow_parent_run_id"]
    config = load_tiny(workdir, **{"train.momentum": 0.0})
    study = run_study(config, experiment_path=path, on_change="fresh")
    assert "on_change='fresh': deleted study 'tiny' (1 trials)" in capsys.readouterr().err
    assert [t.number for t in study.trials] == [0, 1]
    assert study.user_attrs["config_sha256"] == fingerprint(config) != fingerprint(load_tiny(workdir))
    client, runs = mlflow_runs(workdir)
    assert len(runs) == 2 + 3  # the old parent and its trial, the new parent and its two trials
    [replaced], [parent] = parents(runs, "replaced-study"), parents(runs)
    assert replaced.info.run_id == old_parent != parent.info.run_id == study.user_attrs["mlflow_parent_run_id"]
    momentum = sorted((r.data.tags["mlflow.parentRunId"] == old_parent, float(r.data.params["momentum"]))
                      for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert momentum == [(False, 0.0), (False, 0.0), (True, 0.9)]


def test_extend_continues_with_the_new_configuration_and_records_from_which_trial(workdir, capsys):
    write_experiment(workdir / "tiny.toml", TINY)
    run_study(load_tiny(workdir, n_trials=2))
    new = load_tiny(workdir, n_trials=3, **{"train.momentum": 0.0})
    study = run_study(new, on_change="extend")
    err = capsys.readouterr().err
    assert f"on_change='extend': study 'tiny' continues from trial 2 with {REFUSED}" in err
    assert "resuming tiny: 2 of 3 trials finished" in err
    assert study.user_attrs[CHANGES_ATTR] == [{"from_trial": 2, "config_sha256": fingerprint(new),
                                               "changes": [REFUSED]}]
    assert study.user_attrs["config_sha256"] == fingerprint(new)
    client, runs = mlflow_runs(workdir)
    [parent] = parents(runs)
    assert parent.data.tags["sgdtune.config_changes"] == f"from trial 2: {REFUSED}"
    momentum = {int(r.data.tags["sgdtune.trial_number"]): float(r.data.params["momentum"])
                for r in runs if "sgdtune.trial_number" in r.data.tags}
    assert momentum == {0: 0.9, 1: 0.9, 2: 0.0}
    assert len(run_study(load_tiny(workdir, n_trials=3, **{"train.momentum": 0.0})).trials) == 3  # now its own
    with pytest.raises(InputError, match=re.escape("got train.momentum: 0.0 -> 0.9")):
        run_study(load_tiny(workdir, n_trials=3))
    with pytest.raises(InputError, match="on_change='extend': cannot change a study's objectives; give a new "
                       "name="):
        run_study(load_tiny(workdir, n_trials=3, objectives=["compute_time_s"], **{"train.momentum": 0.0}),
                  on_change="extend")


def test_a_study_from_before_recording_is_adopted_then_held_to_it(workdir, capsys):
    write_experiment(workdir / "tiny.toml", TINY)
    config = load_tiny(workdir, n_trials=1, **{"train.momentum": 0.5})
    storage = open_storage(locations(config)[0])
    old = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    old.add_trial(optuna.trial.create_trial(value=0.5))  # as an earlier sgdtune left it: no configuration
    study = run_study(config, track=False)
    assert "resuming tiny: 1 of 1 trials finished; nothing to run" in capsys.readouterr().err
    assert study.user_attrs["config_sha256"] == fingerprint(config)
    assert study.user_attrs["config_recorded_at_trial"] == 1
    with pytest.raises(InputError, match=re.escape("got train.momentum: 0.5 -> 0.9")):
        run_study(load_tiny(workdir, n_trials=1), track=False)


def test_diff_names_dotted_keys_and_counts_a_field_added_since_as_its_default(tmp_path):
    config = load_experiment(write_experiment(tmp_path / "tiny.toml", TINY))
    assert diff({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1.0, "c": [1, 3]}, "d": "x"}) == [
        'a.c: [1, 2] -> [1, 3]', 'd: (none) -> "x"']
    old = json.loads(canonical_json(config))
    del old["train"]["weight_decay"]  # recorded before the field existed
    assert config_diff(json.dumps(old), config) == []
    old["search"]["epochs"] = {"low": 1, "high": 2}
    assert config_diff(json.dumps(old), config) == [  # a searched [train] value is not recorded
        "train.epochs: (none) -> 1",
        'search.epochs: {"low": 1.0, "high": 2.0, "log": false, "step": null, "choices": null, '
        '"stratify": false} -> (none)']
