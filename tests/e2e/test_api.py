"""The Python API as docs/usage.md shows it, run literally."""

import re
import subprocess
import sys

from conftest import ROOT

from sgdtune.config import load_experiment
from sgdtune.search.strategy import open_study
from sgdtune.store.stores import locations, open_storage
from sgdtune.study.identity import canonical_json


def readme_api_block() -> str:
    text = (ROOT / "docs/usage.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_usage_guides_python_api_example_runs_as_written(workdir):
    # In a fresh interpreter that has imported the trainer package first: `sgdtune.train`
    # must still be the function, not a module.
    code = "import sgdtune.trainer, sgdtune.study\n" + readme_api_block()
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id, acc = out.stdout.split()[-2:]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    assert 0.5 < float(acc) <= 1.0


def test_the_api_names_are_what_the_readme_says():
    import sgdtune
    from sgdtune import load_data, load_experiment, run_study, train
    from sgdtune.trainer import TrainResult

    assert callable(train) and train.__module__.startswith("sgdtune.trainer")
    assert train.__annotations__.get("return") in (TrainResult, "TrainResult")
    assert callable(run_study) and callable(load_experiment) and callable(load_data)
    assert sgdtune.ConfigError is sgdtune.InputError  # the older name of the one input-error type


def test_a_diverged_trial_run_through_the_api_prints_one_line_not_a_traceback(workdir):
    code = """if True:
        from sgdtune import load_experiment, run_study
        config = load_experiment("experiments/quick.toml", n_trials=1, name="diverges", keep_models=0, **{
            "search.lr.low": 1e5, "search.lr.high": 1e6, "search.batch_size.choices": [16]})
        print(run_study(config, track=False).trials[0].state.name)
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["FAIL"], out.stderr
    err = out.stderr
    failed = [line for line in err.splitlines() if "Trial 0 failed" in line]
    assert len(failed) == 1 and "diverged" in failed[0].lower()
    assert "Traceback" not in err and "failed with value None" not in err


def test_the_readme_api_example_runs_beside_an_earlier_quick_study(workdir):
    quick = load_experiment("experiments/quick.toml")
    study = open_study(quick, open_storage(locations(quick)[0]))
    study.set_user_attr("config_json", canonical_json(quick))  # `python -m sgdtune.study quick.toml` ran here
    code = "import sgdtune.trainer, sgdtune.study\n" + readme_api_block()
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
