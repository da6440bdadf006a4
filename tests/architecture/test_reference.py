"""The experiment reference (generated from the schemas) and paths relative to the experiment file."""

from pathlib import Path

import pytest
from conftest import ROOT

from sgdtune.config import ExperimentConfig, _allowed_keys, load_experiment
from sgdtune.data import load_data
from sgdtune.errors import InputError
from sgdtune.reference import FLAG_KEYS, NO_DESCRIPTION, main, render

DOC = ROOT / "docs" / "experiment-reference.md"


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == render(), (
        "docs/experiment-reference.md differs from the schemas: run python -m sgdtune.reference "
        "--out docs/experiment-reference.md")


def test_every_key_of_every_section_has_a_row_with_a_description():
    text = render()
    sections = {"": ""} | {name: f"{name}.<key>." if name == "search" else f"{name}."
                           for name in ("data", "model", "train", "search", "sampler", "pruner")}
    rows = 0
    for section, prefix in sections.items():
        for key in _allowed_keys(section):
            if section == "" and key in sections:
                continue  # a table, with its own section
            assert f"\n| `{prefix}{key}` | " in text, f"{prefix}{key} has no row"
            rows += 1
    assert rows == text.count("\n| `") - 8  # and no other rows (the 8 are search's keys table)
    assert NO_DESCRIPTION not in text
    assert "train.seed" not in text and "train.model." not in text  # set at the top level and in [model]


@pytest.mark.parametrize("row", [
    "| `train.momentum` | number | `0.9` | >= 0, < 1 | SGD momentum |",
    "| `timeout_s` | number | `unset` | > 0 | seconds after which no new trial starts; unset = no limit; "
    "flag `--timeout` |",
    "| `objectives` | array of strings | `[\"val_acc\"]` | \"val_acc\" \\| \"compute_time_s\", at least 1 item, "
    "at most 2 items |",
    "| `train.probe_size` | integer or \"auto\" | `\"auto\"` | as the meaning says | examples in the gradient-noise "
    "probe",
    "| `data.standardize` | boolean | `unset` | any | standardize the features with training statistics;",
    "| `search.<key>.step` | number | `unset` | > 0 | spacing of the values from low to high",
    "| `search.batch_size` | integers (whole numbers) | >= 1 |",
    "| `sampler.name` | string | `\"tpe\"` | \"tpe\" \\| \"random\" \\| \"grid\" \\| \"cmaes\" \\| \"gp\" | ",
    "| 0.9 | 33 | 42 | 66 |",  # the fewest rows for val_fraction 0.9 and test_fraction 0, 0.2, 0.5
])
def test_rows_show_type_default_rules_and_meaning(row):
    assert "\n" + row in render()


def test_the_reference_states_paths_standardization_the_search_rule_and_precedence():
    text = " ".join(render().split())
    for sentence in [
        "`data.path` written in an experiment file is relative to **the file's folder**",
        "`data.path` given with `--set data.path=...` (or as a keyword to `load_experiment`) is relative to "
        "**the working directory**",
        "Regression targets (`data.task = \"regression\"`) are **never** standardized",
        "Setting it directly, with `--set train.X=...` or the keyword `train.X`, is refused: change `[search.X]`",
        "when a flag and a `--set` name the same key, the `--set` wins",
    ]:
        assert sentence in text


def test_main_prints_writes_and_refuses_an_unwritable_file(tmp_path, capsys):
    assert main([]) == 0 and capsys.readouterr().out == render()
    assert main(["--out", str(tmp_path / "ref.md")]) == 0
    assert (tmp_path / "ref.md").read_text() == render()
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "no" / "such" / "ref.md")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out: must be a file in an existing folder; got '{tmp_path / 'no' / 'such' / 'ref.md'}'\n"


def test_the_flags_the_reference_names_exist_and_set_those_keys():
    from sgdtune.cli import study_parser

    options = {s for action in study_parser()._actions for s in action.option_strings}
    assert set(FLAG_KEYS) <= options
    assert set(FLAG_KEYS.values()) <= set(ExperimentConfig.model_fields)


def test_a_set_beats_a_flag_and_a_flag_beats_the_file(tmp_path, monkeypatch, capsys):
    from sgdtune.cli import study_main

    (tmp_path / "x.toml").write_text("seed = -3\n")
    monkeypatch.chdir(tmp_path)
    # Each layer gives a bad seed of its own, so the message says which one was used.
    assert study_main(["x.toml", "--seed", "-2", "--set", "seed=-1"]) == 2
    assert capsys.readouterr().err == "error: x.toml: seed: must be >= 0; got -1\n"
    assert study_main(["x.toml", "--seed", "-2"]) == 2
    assert capsys.readouterr().err == "error: x.toml: seed: must be >= 0; got -2\n"
    assert study_main(["x.toml"]) == 2
    assert capsys.readouterr().err == "error: x.toml: seed: must be >= 0; got -3\n"


# -- paths in an experiment file --------------------------------------------------------------

CSV = "a,b,label\n" + "".join(f"{i},{(i * 7) % 5},{i % 2}\n" for i in range(200))
EXPERIMENT = """name = "paths"
n_trials = 1
[data]
dataset = "csv"
path = "{path}"
[model]
hidden = [8]
[train]
epochs = 1
probe_size = 0
sharpness_every = 0
[search.lr]
choices = [0.1]
[pruner]
name = "none"
"""


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """tmp/project/{experiments/x.toml -> ../data/x.csv, data/x.csv}; the working directory is
    tmp/elsewhere, where ../data/x.csv does not exist."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "x.csv").write_text(CSV)
    (tmp_path / "project" / "experiments").mkdir()
    (tmp_path / "project" / "experiments" / "x.toml").write_text(EXPERIMENT.format(path="../data/x.csv"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "project"


def test_a_relative_data_path_is_relative_to_the_experiment_file(project):
    assert not Path("../data/x.csv").exists()
    config = load_experiment("../project/experiments/x.toml")
    assert config.data.path == (project / "data" / "x.csv").resolve()
    data = load_data(config.data, config.seed)
    assert (data.n_train, data.n_val, data.n_classes) == (160, 40, 2)


def test_a_study_runs_from_another_folder_with_a_relative_data_path(project, capsys):
    from sgdtune.cli import study_main

    code = study_main([str(project / "experiments" / "x.toml"), "--no-progress", "--no-tracking",
                       "--storage", "paths.journal"])
    assert code == 0, capsys.readouterr().err
    assert Path("paths.journal").is_file() and not (project / "experiments" / "paths.journal").exists()


def test_an_absolute_or_home_path_is_kept_and_a_set_path_is_relative_to_the_working_directory(
        project, tmp_path, monkeypatch):
    absolute = project / "data" / "x.csv"
    (project / "experiments" / "abs.toml").write_text(EXPERIMENT.format(path=absolute))
    assert load_experiment(project / "experiments" / "abs.toml").data.path == absolute
    monkeypatch.setenv("HOME", str(project))
    (project / "experiments" / "home.toml").write_text(EXPERIMENT.format(path="~/data/x.csv"))
    assert load_experiment(project / "experiments" / "home.toml").data.path == absolute
    (tmp_path / "elsewhere" / "here.csv").write_text(CSV)
    config = load_experiment(project / "experiments" / "x.toml", **{"data.path": "here.csv"})
    assert config.data.path == Path("here.csv") and config.data.path.resolve() == tmp_path / "elsewhere" / "here.csv"
    with pytest.raises(InputError) as info:  # --set ../data/x.csv: from the working directory, where it is not
        load_experiment(project / "experiments" / "x.toml", **{"data.path": "../data/x.csv"})
    assert "data.path: must be an existing file; got '../data/x.csv' (no such file)" in str(info.value)


def test_a_missing_relative_path_says_what_was_written_and_where_it_was_looked_for(project, capsys):
    from sgdtune.cli import study_main

    toml = project / "experiments" / "gone.toml"
    toml.write_text(EXPERIMENT.format(path="../data/gone.csv"))
    with pytest.raises(InputError) as info:
        load_experiment(toml)
    resolved = (project / "data" / "gone.csv").resolve()
    assert str(info.value) == (f"{toml}: data.path: must be an existing file; got '../data/gone.csv' (no such file: "
                               f"{resolved}; a relative path in an experiment file is relative to the file's folder)")
    assert study_main([str(toml), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {info.value}\n"
    # Replaced by --set, or unused by the dataset: the written path is not looked for.
    assert load_experiment(toml, **{"data.path": str(project / "data" / "x.csv")}).data.path.name == "x.csv"
    assert load_experiment(toml, **{"data.dataset": "digits"}).data.dataset == "digits"
