"""The small things a user meets first: quick `--help`, the right usage line in both forms,
Ctrl-C without a traceback, a closing table that fits the terminal."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, ROOT

from sgdtune.cli import report_main

HEAVY = ("torch", "optuna", "mlflow", "sgdtune.store.writer_child")  # writer_child: the prestart of the writer
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
    (["sgdtune.profile"], "python -m sgdtune.profile"),
    (["sgdtune", "study"], "sgdtune study"),
    (["sgdtune", "report"], "sgdtune report"),
    (["sgdtune", "ui"], "sgdtune ui"),
    (["sgdtune", "surface"], "sgdtune surface"),
    (["sgdtune", "profile"], "sgdtune profile"),
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
    assert printed.startswith("usage: sgdtune {study,report,surface,ui,storage-proxy,model,cluster,profile} "
                              "[options]")
    assert not {m for m in modules if m.split(".")[0] in ("torch", "optuna", "mlflow", "numpy")}


def test_the_probe_sees_a_heavy_import_when_there_is_one():
    # The same probe on a command that runs: `report` with no store fails after importing Optuna.
    status, _, modules = probe("sgdtune.report", "--storage", "/nonexistent/optuna.journal")
    assert status == 2
    assert "optuna" in modules


@pytest.mark.parametrize("prog", ["python -m sgdtune.report", "sgdtune report"])
def test_report_json_records_the_report_command_as_typed(quick_study, monkeypatch, tmp_path, prog):
    monkeypatch.chdir(quick_study)
    assert report_main(["--study-name", "quick", "--out", str(tmp_path)], prog=prog) == 0
    repro = json.loads((tmp_path / "quick/report.json").read_text())["reproducibility"]
    assert repro["report_command"] == f"{prog} --study-name quick --out {tmp_path}"


# -- Ctrl-C ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "worker processes"])
def test_ctrl_c_during_a_trial_prints_one_clean_line_and_no_traceback(tmp_path, workers):
    import optuna

    from sgdtune.store.stores import open_storage

    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    long_trials = ["--set", "search.epochs.low=300", "--set", "search.epochs.high=400"]  # minutes each
    proc = subprocess.Popen([sys.executable, "-m", "sgdtune.study", "experiments/quick.toml", "--no-progress",
                             *long_trials, *workers], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    journal = tmp_path / "mlruns/optuna.journal"
    try:
        deadline = time.monotonic() + 180
        running = []
        while not running and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if journal.exists():
                try:
                    study = optuna.load_study(study_name="quick", storage=open_storage(str(journal)))
                except KeyError:  # the study is not in the journal yet
                    continue
                running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        assert running, "no trial started"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the command
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted (Ctrl-C): finished trials are kept; run the same command again to resume."
    assert "Traceback" not in err + out


def spawned_children_of(pid: int) -> list[int]:
    """Pids of multiprocessing's spawned children of `pid` (the --workers processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"multiprocessing.spawn" in (entry / "cmdline").read_bytes():
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def importing_torch(pid: int) -> bool:
    """Whether process `pid` has loaded torch's library: it is inside `import torch` (seconds of
    imports before a worker takes its handlers), or past it."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # ended meanwhile
        return False


def test_ctrl_c_while_the_workers_still_import_prints_one_clean_line_and_no_traceback(tmp_path):
    """The workers get the group's SIGINT while they import (before they have handlers): they
    start with it held (workers.supervise) and take it once they can stop cleanly."""
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    proc = subprocess.Popen([sys.executable, "-m", "sgdtune.study", "experiments/quick.toml", "--no-progress",
                             "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(spawned_children_of(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = spawned_children_of(proc.pid)
        assert proc.poll() is None and len(workers) == 2, "the workers did not start"
        while not all(importing_torch(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C, while the workers import torch
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out
    assert err.strip().endswith("interrupted (Ctrl-C): finished trials are kept; run the same command again to resume.")


def writer_started_by(pid: int) -> bool:
    """Whether process `pid` has started MLflow's writer process (cli.study_main, after parsing)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"sgdtune.store.writer" in (entry / "cmdline").read_bytes():
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    return True
        except OSError:  # ended meanwhile
            continue
    return False


@pytest.mark.parametrize("argv", [["sgdtune.study"], ["sgdtune", "study"]], ids=["python -m", "sgdtune"])
def test_ctrl_c_while_starting_prints_one_line_and_no_traceback(tmp_path, argv):
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    proc = subprocess.Popen([sys.executable, "-m", *argv, "experiments/quick.toml", "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not writer_started_by(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the study ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # while it imports torch (or, at the latest, runs the first trial)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() in ("interrupted.",
                           "interrupted (Ctrl-C): finished trials are kept; run the same command again to resume.")
    assert "Traceback" not in err + out


def test_the_interrupt_filter_drops_a_ctrl_c_trial_and_keeps_real_errors():
    import io
    import logging

    import optuna

    from sgdtune.study.console import hide_interrupted_trials

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("optuna").addHandler(handler)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # an in-process study before may have set WARNING
    try:
        hide_interrupted_trials()
        study = optuna.create_study()

        def broken(trial):
            raise ValueError("a real bug")

        def interrupted(trial):
            raise KeyboardInterrupt

        with pytest.raises(ValueError):
            study.optimize(broken, n_trials=1)
        with pytest.raises(KeyboardInterrupt):
            study.optimize(interrupted, n_trials=1)
        study.optimize(lambda trial: 1.0, n_trials=1)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
        optuna.logging.set_verbosity(verbosity)
    logged = stream.getvalue()
    assert "Trial 0 failed with parameters: {} because of the following error: ValueError('a real bug')" in logged
    assert 'raise ValueError("a real bug")' in logged  # its traceback
    assert "Trial 0 failed with value None." in logged
    assert "Trial 1" not in logged and "KeyboardInterrupt" not in logged
    assert "Trial 2 finished with value: 1.0" in logged


# -- the closing lines ---------------------------------------------------------------------------


def finished_study(experiment_id: str = "7"):
    """A real in-memory study of five finished trials, as run_study leaves them."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    study = optuna.create_study(direction="maximize", study_name="quick")
    dists = {"batch_size": CategoricalDistribution([16, 64, 256, 1024]), "lr": FloatDistribution(0.01, 0.2, log=True),
             "epochs": IntDistribution(2, 4)}
    for n, (b, lr, acc) in enumerate([(16, 0.0123, 0.91), (64, 0.05, 0.95), (256, 0.1, 0.93), (1024, 0.19, 0.88)]):
        summary = {"final_val_acc": acc, "final_gen_gap": 0.01 * n, "compute_time_s": 1.5 + n}
        study.add_trial(optuna.trial.create_trial(
            params={"batch_size": b, "lr": lr, "epochs": 3}, distributions=dists, value=acc,
            user_attrs={"summary": summary, "mlflow_run_id": f"run{n}abcdef0123456789abcdef0123"}))
    study.set_user_attr("mlflow_experiment_id", experiment_id)
    return study


def closing(monkeypatch, capsys, columns: int, tracking_uri: str = "sqlite:////tmp/x/mlflow.db") -> str:
    from sgdtune.config import load_experiment
    from sgdtune.study.console import print_closing

    monkeypatch.setenv("COLUMNS", str(columns))
    print_closing(finished_study(), load_experiment(EXPERIMENTS / "quick.toml"), "mlruns/optuna.journal",
                  tracking_uri)
    return capsys.readouterr().out


def test_the_closing_table_fits_a_narrow_terminal_and_says_what_it_left_out(monkeypatch, capsys):
    out = closing(monkeypatch, capsys, 60)
    table = out.split("trials: ")[0].splitlines()
    assert max(len(line) for line in table) <= 60
    header = next(line for line in table if "batch_size" in line)
    assert header.split() == ["┃", "trial", "┃", "batch_size", "┃", "lr", "┃", "val_acc", "┃", "budget", "┃"]
    assert "(left out at 60 columns: gen_gap, compute s, mlflow run)\n" in out
    best = next(line for line in table if "0.9500" in line)  # the best trial, whole: nothing cut
    assert "64" in best and "0.05" in best and "epochs=3" in best and "…" not in out


def test_the_closing_table_is_whole_in_a_wide_terminal(monkeypatch, capsys):
    out = closing(monkeypatch, capsys, 200)
    header = next(line for line in out.splitlines() if "batch_size" in line)
    for column in ("trial", "batch_size", "lr", "val_acc", "budget", "gen_gap", "compute s", "mlflow run"):
        assert column in header
    assert "left out" not in out
    assert "run1abcdef01 " in out  # trial 1's MLflow run id, its first 12 characters
    rows = [line for line in out.splitlines() if "epochs=3" in line]
    assert [row.split()[1] for row in rows] == ["1", "2", "0", "3"]  # best val_acc first


def test_the_closing_table_of_a_pareto_study_marks_its_front(monkeypatch, capsys):
    import optuna

    from sgdtune.config import load_experiment
    from sgdtune.study.console import print_closing

    study = optuna.create_study(directions=["maximize", "minimize"], study_name="quick")
    # (val_acc, seconds): trial 1 is beaten by trial 0 on both; 0, 2 and 3 are the front
    for acc, seconds in [(0.95, 2.0), (0.93, 3.0), (0.97, 5.0), (0.90, 1.0)]:
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[acc, seconds],
                                                  user_attrs={"summary": {"final_val_acc": acc}}))
    monkeypatch.setenv("COLUMNS", "120")
    config = load_experiment(EXPERIMENTS / "quick.toml", objectives=["val_acc", "compute_time_s"])
    print_closing(study, config, "mlruns/optuna.journal", None)
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if "0.9" in line and "│" in line}
    assert [k for k, line in rows.items() if line.split()[2] == "*"] == ["2", "0", "3"]
    assert "* on the Pareto front of val_acc and compute_time_s: trials 0, 2, 3" in out


def test_the_closing_table_shows_mean_and_std_of_val_acc_with_replicates(monkeypatch, capsys):
    import optuna

    from sgdtune.config import load_experiment
    from sgdtune.study.console import print_closing

    study = finished_study()
    summary = {"final_val_acc": 0.9806, "final_val_acc_std": 0.0042, "final_gen_gap": 0.01, "compute_time_s": 2.0}
    study.add_trial(optuna.trial.create_trial(
        params={"batch_size": 16, "lr": 0.02, "epochs": 3}, distributions=study.trials[0].distributions,
        value=0.9806, user_attrs={"summary": summary, "mlflow_run_id": "run9"}))
    monkeypatch.setenv("COLUMNS", "200")
    print_closing(study, load_experiment(EXPERIMENTS / "quick.toml"), "mlruns/optuna.journal", None)
    rows = [line for line in capsys.readouterr().out.splitlines() if "epochs=3" in line]
    assert "0.9806 ± 0.0042" in rows[0] and "±" not in "".join(rows[1:])  # without replicates: the value alone


def test_batch_trials_help_says_which_models_stack():
    from sgdtune.cli import study_parser

    text = " ".join(study_parser().format_help().split())
    assert "--batch-trials K train up to K trials of one batch size at once as one stacked model: the built-in MLP " \
           "(batched products), the CNN and factory models without buffers or dropout (torch.func); others " \
           "(BatchNorm, dropout) train one by one" in text


def test_a_tracking_server_is_opened_at_its_own_url_without_credentials(monkeypatch, capsys):
    out = closing(monkeypatch, capsys, 120, "http://alice:s3cret@127.0.0.1:5111/")
    assert "open the MLflow UI: http://127.0.0.1:5111/#/experiments/7/runs?workflowType=machine_learning" \
           "&viewStateShareKey=sgdtune-trials\n" in out
    assert "mlflow ui" not in out and "s3cret" not in out
    assert "mlflow store:   http://alice:***@127.0.0.1:5111/" in out


def test_a_local_store_gets_the_command_that_serves_it(monkeypatch, capsys):
    out = closing(monkeypatch, capsys, 120)
    assert "  mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1 --port 5000\n" in out
    assert "  then http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" \
           "&viewStateShareKey=sgdtune-trials\n" in out


def test_a_study_where_no_trial_completes_ends_with_a_line_saying_so_and_its_report_says_so_too(tmp_path):
    """lr = 1e30 diverges at the second update of every trial: the study ends (exit 0), its
    closing line says no trial completed and why, and --report is written and says it too."""
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    done = subprocess.run([sys.executable, "-m", "sgdtune.study", "experiments/quick.toml", "--n-trials", "2",
                           "--set", "search.lr={choices=[1e30]}", "--no-progress", "--report"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "no trial completed, nothing to rank (2 failed, 0 pruned; fail reasons: 'training loss became nan" \
           in done.stdout
    assert "trials: 0 complete, 0 pruned, 2 fail\n" in done.stdout
    report = json.loads((tmp_path / "reports" / "quick" / "report.json").read_text())
    assert report["study"]["trials_by_state"] == {"COMPLETE": 0, "PRUNED": 0, "FAIL": 2}
    assert report["summary"][1].startswith("No trial completed: there is nothing to compare")
    assert "(2 trials)" in report["summary"][1]
    assert "No trial completed" in (tmp_path / "reports" / "quick" / "report.html").read_text()


def test_a_ctrl_c_trial_is_dropped_by_a_handler_after_another_handler_made_it_one_line():
    """Two handlers share each record: the one-line filter of the first (run_study installs it)
    must not hide the interrupt from the interrupt filter of the second."""
    import io
    import logging

    import optuna

    from sgdtune.study.console import InterruptedTrialFilter, _OneLineFailures

    first, second = io.StringIO(), io.StringIO()
    one_line, hiding = logging.StreamHandler(first), logging.StreamHandler(second)
    one_line.addFilter(_OneLineFailures())
    hiding.addFilter(InterruptedTrialFilter())
    logger = logging.getLogger("optuna")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    logger.addHandler(one_line)
    logger.addHandler(hiding)
    try:
        study = optuna.create_study()

        def interrupted(trial):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            study.optimize(interrupted, n_trials=1)
    finally:
        logger.removeHandler(one_line)
        logger.removeHandler(hiding)
        optuna.logging.set_verbosity(verbosity)
    assert "Trial 0 failed with parameters" in first.getvalue() and "Traceback" not in first.getvalue()
    assert "Trial 0" not in second.getvalue()
