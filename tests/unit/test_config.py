"""The experiment schema: shipped files load, overrides apply, rules give clear messages."""

import re

import pytest
from conftest import EXPERIMENTS

from sgdtune.config import load_experiment, parse_overrides
from sgdtune.errors import InputError


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_experiment_is_valid(path):
    config = load_experiment(path)
    assert config.name == path.stem
    assert config.search


def test_the_default_experiment_searches_batch_size_8_to_1024_on_a_log_scale():
    config = load_experiment(EXPERIMENTS / "batch_tradeoff.toml")
    bs = config.search["batch_size"]
    assert (bs.low, bs.high, bs.log) == (8, 1024, True)
    assert config.search["lr"].log and "epochs" in config.search
    assert config.data.dataset == "digits"


def test_dotted_overrides_reach_into_tables():
    overrides = parse_overrides(["train.momentum=0.5", 'train.optimizer="adam"'])
    config = load_experiment(EXPERIMENTS / "quick.toml", **overrides, seed=7)
    assert (config.train.momentum, config.train.optimizer, config.seed) == (0.5, "adam", 7)


def test_the_grid_sampler_needs_explicit_values(tmp_path):
    (tmp_path / "g.toml").write_text('[sampler]\nname = "grid"\n[search.lr]\nlow = 0.1\nhigh = 1.0\n')
    with pytest.raises(InputError, match="search.lr: the grid sampler needs choices"):
        load_experiment(tmp_path / "g.toml")


def test_a_searched_budget_size_must_fit_the_budget(tmp_path):
    (tmp_path / "u.toml").write_text('[train]\nbudget = "updates"\n[search.updates]\nlow = 0\nhigh = 100\n')
    with pytest.raises(InputError, match="search.updates: must be >= 1; got 0"):
        load_experiment(tmp_path / "u.toml")


def test_seed_inside_train_points_to_the_top_level(tmp_path):
    (tmp_path / "s.toml").write_text("[train]\nseed = 3\n")
    with pytest.raises(InputError, match=r"train.seed: unknown key; set it at the top level"):
        load_experiment(tmp_path / "s.toml")


def test_a_missing_experiment_file_is_named():
    with pytest.raises(InputError, match="experiment: must be an existing TOML file; got 'nope.toml'"):
        load_experiment("nope.toml")


def test_the_usage_guides_experiment_example_is_a_valid_experiment(tmp_path):
    import re

    readme = (EXPERIMENTS.parent / "docs/usage.md").read_text()
    block = re.search(r"### Experiments are files.*?```toml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "x.toml").write_text(block)
    config = load_experiment(tmp_path / "x.toml")
    assert (config.train.probe_size, config.train.measure_every_epochs, config.replicates) == ("auto", "auto", 1)


@pytest.mark.parametrize("line,message", [
    ('n_trials = "24"', "n_trials: must be a whole number, written without quotes; got '24'"),
    ('[train]\nlr = "0.1"', "train.lr: must be a number, written without quotes; got '0.1'"),
    ('[data]\nval_fraction = "0.3"', "data.val_fraction: must be a number, written without quotes; got '0.3'"),
    ('[data]\nstandardize = "false"', "data.standardize: must be true or false, written without quotes; got 'false'"),
])
def test_a_string_where_a_number_belongs_in_the_file_is_refused_naming_the_field(tmp_path, line, message):
    path = tmp_path / "strings.toml"
    path.write_text(line + "\n")
    with pytest.raises(InputError) as error:
        load_experiment(path)
    assert str(error.value) == f"{path}: {message}"


def test_set_values_are_parsed_as_toml_so_a_number_stays_a_number_and_a_quoted_one_is_refused(tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text("[model]\nhidden = [8]\n")
    config = load_experiment(path, **parse_overrides(["n_trials=24", "model.hidden=[4, 2]", "train.momentum=0"]))
    assert (config.n_trials, config.model.hidden, config.train.momentum) == (24, (4, 2), 0.0)
    with pytest.raises(InputError, match="n_trials: must be a whole number, written without quotes; got '24'"):
        load_experiment(path, **parse_overrides(['n_trials="24"']))


@pytest.mark.parametrize("sets,message", [
    ({"search.epochs.stratify": True}, "stratify needs a log range holding at least 2 powers of two"),
    ({"search.lr.stratify": True}, "works for one parameter with sampler tpe | random | gp; got ['batch_size', 'lr']"),
    ({"search.batch_size.low": 600}, "stratify needs a log range holding at least 2 powers of two"),
    ({"sampler.name": "cmaes"}, "search.batch_size.stratify: works for one parameter with sampler tpe | random | gp"),
])
def test_bad_stratify_settings_are_input_errors(sets, message):
    from sgdtune.config import load_experiment

    with pytest.raises(InputError, match=re.escape(message)):
        load_experiment(EXPERIMENTS / "batch_tradeoff.toml", **sets)
