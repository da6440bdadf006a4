"""`python -m sgdtune.ui`: real servers on loopback, the study's runs over the REST API, a clean stop."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from browser import chromium, open_page  # noqa: F401 (chromium is a fixture)

from sgdtune.cli import ui_main
from sgdtune.store.stores import open_storage

UP_TIMEOUT_S = 90  # mlflow server and optuna-dashboard start together on 2 CPU cores in ~25 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def quick(quick_study):
    """The shared quick study's folder (conftest.quick_study) and the study."""
    cwd = quick_study
    import optuna

    study = optuna.load_study(study_name="quick", storage=open_storage(str(cwd / "mlruns/optuna.journal")))
    return cwd, study


class Lines:
    """A child's stdout, read line by line on a thread (so waiting for a line can time out)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no line with {text!r} in {timeout_s} s; got {self.lines}")
            time.sleep(0.2)


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.timeout(180)
def start_ui(cwd, reaper, *argv: str) -> subprocess.Popen:
    """`python -m sgdtune.ui *argv` in `cwd`, stopped by `reaper` if pytest is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "sgdtune.ui", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)
    reaper.watch(proc.pid)
    return proc


def test_ui_serves_the_study_runs_and_the_dashboard_then_stops_its_children(quick, reaper):
    cwd, study = quick
    port, optuna_port = free_port(), free_port()
    proc = start_ui(cwd, reaper, "--port", str(port), "--optuna", "--optuna-port", str(optuna_port))
    out = Lines(proc)
    try:
        out.wait_for("Ctrl-C stops the servers", UP_TIMEOUT_S)
        experiment_id = study.user_attrs["mlflow_experiment_id"]
        runs_table = (f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                      "&viewStateShareKey=sgdtune-trials")
        assert f"  quick: {runs_table}\n" in out.lines

        found = post_json(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
        trial_runs = {t.user_attrs["mlflow_run_id"] for t in study.get_trials()}
        assert {r["info"]["run_id"] for r in found["runs"]} == trial_runs | {study.user_attrs["mlflow_parent_run_id"]}
        with urllib.request.urlopen(f"http://127.0.0.1:{optuna_port}/api/studies", timeout=10) as r:
            assert [s["study_name"] for s in json.loads(r.read())["study_summaries"]] == ["quick"]
    finally:
        proc.send_signal(signal.SIGTERM)  # what Ctrl-C does, without a terminal
        proc.wait(timeout=60)
        reaper.forget(proc.pid)  # stopped: its group id may be reused
    out.thread.join(5)
    assert proc.returncode == 0
    pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", "".join(out.lines))]
    assert len(pids) == 2
    assert not any(group_alive(p) for p in pids)  # the servers and every worker they forked
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        ui_main(["--help"])
    assert exit_.value.code == 0
    assert "python -m sgdtune.ui --optuna" in capsys.readouterr().out


def test_a_port_in_use_exits_2_with_one_message(quick, monkeypatch, capsys):
    cwd, _ = quick
    monkeypatch.chdir(cwd)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert ui_main(["--port", str(port)]) == 2
    assert f"--port: must be a free port on 127.0.0.1; got {port}" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--port", "0"], "--port: must be in 1..65535; got 0"),
    (["--tracking-uri", "sqlite:////nonexistent/mlflow.db"],
     "--tracking-uri: must name an existing MLflow store; got 'sqlite:////nonexistent/mlflow.db'"),
    (["--optuna", "--port", "5000", "--optuna-port", "5000"],
     "--optuna-port: must differ from --port; got 5000 for both"),
    (["--optuna", "--storage", "missing.journal", "--optuna-port", "5001"],
     "--storage: must be an existing Optuna journal file or a database URL; got 'missing.journal'"),
])
def test_bad_flags_exit_2_and_start_nothing(quick, monkeypatch, capsys, argv, message):
    cwd, _ = quick
    monkeypatch.chdir(cwd)
    assert ui_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.timeout(240)
def test_the_printed_url_opens_the_trials_best_first_with_their_params_and_metrics(quick, chromium, reaper):  # noqa: F811
    from mlflow import MlflowClient

    from sgdtune.store.runs_view import NAME, TAG
    from sgdtune.store.tracking import default_tracking_uri

    cwd, study = quick
    experiment_id = study.user_attrs["mlflow_experiment_id"]
    client = MlflowClient(tracking_uri=default_tracking_uri(cwd / "mlruns"))
    assert TAG in client.get_experiment(experiment_id).tags  # the study wrote its view
    client.delete_experiment_tag(experiment_id, TAG)  # as in a store from before: `sgdtune ui` writes it
    port = free_port()
    proc = start_ui(cwd, reaper, "--port", str(port))
    out = Lines(proc)
    try:
        out.wait_for("Ctrl-C stops the servers", UP_TIMEOUT_S)
        url = next(line.split(": ", 1)[1].strip() for line in out.lines if line.startswith("  quick: "))
        with open_page(chromium, url, 1600, 900, timeout_ms=60_000) as visit:
            visit.page.locator(".ag-header-cell[col-id='metrics.`final_val_acc`']").wait_for(timeout=60_000)
            headers = visit.page.locator(".ag-header-cell[col-id]").all()  # in the DOM as rendered, not shown
            columns = [c for _, c in sorted((int(h.get_attribute("aria-colindex")), h.get_attribute("col-id"))
                                            for h in headers)]
            body = visit.page.inner_text("body")
            view = visit.page.locator("[data-component-id='mlflow.experiment_page.saved_views.trigger']").inner_text()
            assert visit.external_requests == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reaper.forget(proc.pid)  # stopped: its group id may be reused
    wanted = ["params.`batch_size`", "params.`lr`", "params.`epochs`", "metrics.`final_val_acc`",
              "metrics.`final_gen_gap`", "metrics.`final_loss_noise`", "metrics.`final_grad_noise_scale`",
              "metrics.`compute_time_s`"]
    assert [c for c in columns if c in wanted] == wanted  # shown, params first, in the view's order
    assert "metrics.`final_val_r2`" not in columns  # named by the view, not logged by a classification study
    assert view.strip() == NAME  # the saved view in use, as the Views menu names it
    by_accuracy = sorted(study.get_trials(), key=lambda t: -t.user_attrs["summary"]["final_val_acc"])
    shown = [name for name in re.findall(r"trial-\d+", body)]
    assert shown == [f"trial-{t.number}" for t in by_accuracy]  # flat, best first: none under a folded parent


def test_the_saved_view_ranks_complete_trials_before_pruned_ones_and_presets_the_parallel_chart(tmp_path):
    """A quick study with a median pruner (2 of 6 trials pruned, seed 0). The view sorts on
    complete_val_acc, which only complete runs log: MLflow's search in the view's order (what the UI
    asks the server for) lists every complete trial, best first, before any pruned one."""
    import shutil

    from conftest import EXPERIMENTS, run_cli
    from mlflow import MlflowClient

    from sgdtune.store.runs_view import TAG

    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    out = run_cli("sgdtune.study", "experiments/quick.toml", "--no-progress", "--n-trials", "6", "--set",
                  'pruner.name="median"', "--set", "pruner.n_startup_trials=1", "--set", "pruner.n_warmup_steps=0",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("quick")
    state = json.loads(json.loads(experiment.tags[TAG])["state"])
    order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
    runs = [r for r in client.search_runs([experiment.experiment_id], order_by=[order])
            if "sgdtune.trial_state" in r.data.tags]
    states = [r.data.tags["sgdtune.trial_state"] for r in runs]
    assert "PRUNED" in states and states == sorted(states, key=lambda s: s != "COMPLETE")
    complete = [r for r in runs if r.data.tags["sgdtune.trial_state"] == "COMPLETE"]
    accs = [r.data.metrics["complete_val_acc"] for r in complete]
    assert accs == sorted(accs, reverse=True) and accs == [r.data.metrics["final_val_acc"] for r in complete]
    assert not any("complete_val_acc" in r.data.metrics for r in runs if r not in complete)
    (chart,) = state["compareRunCharts"]
    assert chart["type"] == "PARALLEL" and chart["selectedParams"] == ["batch_size", "lr", "epochs"]
    assert chart["selectedMetrics"] == ["final_val_acc"]
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]  # its own section, listed first
    assert state["compareRunSections"][1]["name"] == "Model metrics"  # where the UI draws a chart per metric
