"""The small things a user meets first: quick `--help`, the right usage line in both forms,
Ctrl-C without a traceback, a closing table that fits the terminal."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import EXPERIMENTS, ROOT

from sgdtune.cli import report_main, study_main

HEAVY = ("torch", "optuna", "mlflow", "sgdtune.writer")  # sgdtune.writer: the prestart of MLflow's writer
# Runs `python -m MODULE ARGS...` as runpy does for -m, then prints the exit status and every
# module loaded, so a test sees what `--help` imported.
PROBE = """
import runpy, sys
module, *args = sys.argv[1:]
sys.argv = [module, *args]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print("\\nexit", code)
print(" ".join(sorted(sys.modules)))
"""


def probe(*argv: str) -> tuple[int, str, set[str]]:
    """(exit status, what the command printed, modules loaded) of `python -m *argv`."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    printed, status, modules = proc.stdout.rsplit("\n", 3)[:3]
    return int(status.split()[1]), printed, set(modules.split())


HELP_FORMS = [
    (["sgdtune.study"], "python -m sgdtune.study"),
    (["sgdtune.report"], "python -m sgdtune.report"),
    (["sgdtune.ui"], "python -m sgdtune.ui"),
    (["sgdtune.surface"], "python -m sgdtune.surface"),
    (["sgdtune", "study"], "sgdtune study"),
    (["sgdtune", "report"], "sgdtune report"),
    (["sgdtune", "ui"], "sgdtune ui"),
    (["sgdtune", "surface"], "sgdtune surface"),
]


@pytest.mark.parametrize("argv,prog", HELP_FORMS, ids=[" ".join(a) for a, _ in HELP_FORMS])
def test_help_imports_nothing_heavy_and_names_the_command_as_typed(argv, prog):
    status, printed, modules = probe(*argv, "--help")
    assert status == 0
    assert printed.startswith(f"usage: {prog} [-h]")
    assert f"\n  {prog} " in printed  # the examples are written the way this command is typed
    other = "sgdtune " if prog.startswith("python") else "python -m sgdtune"
    assert other not in printed
    loaded = {m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY}
    assert loaded == set()


def test_the_console_script_help_lists_the_commands_and_imports_nothing_heavy():
    status, printed, modules = probe("sgdtune", "--help")
    assert status == 0
    assert printed.startswith("usage: sgdtune {study,report,surface,ui} [options]")
    assert not {m for m in modules if m.split(".")[0] in ("torch", "optuna", "mlflow", "numpy")}


def test_the_probe_sees_a_heavy_import_when_there_is_one():
    # The same probe on a command that runs: `report` with no store fails after importing Optuna.
    status, _, modules = probe("sgdtune.report", "--storage", "/nonexistent/optuna.journal")
    assert status == 2
    assert "optuna" in modules


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A directory holding one quick study, run in-process."""
    cwd = tmp_path_factory.mktemp("polish")
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        assert study_main(["experiments/quick.toml", "--no-progress"]) == 0
    return cwd


@pytest.mark.parametrize("prog", ["python -m sgdtune.report", "sgdtune report"])
def test_report_json_records_the_report_command_as_typed(quick, monkeypatch, tmp_path, prog):
    monkeypatch.chdir(quick)
    assert report_main(["--study-name", "quick", "--out", str(tmp_path)], prog=prog) == 0
    repro = json.loads((tmp_path / "quick/report.json").read_text())["reproducibility"]
    assert repro["report_command"] == f"{prog} --study-name quick --out {tmp_path}"
