"""Damaged stores, odd files and odd addresses through the real command line: each one line
on stderr naming the field, exit 2, no traceback; the previous report kept through a write
that fails; the servers' one rule for an address that is not loopback."""

import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import free_port, quick_study_in, run_cli
from mlflow import MlflowClient

from sgdtune.hosts import canonical, is_loopback, url_host
from sgdtune.store.stores import open_storage

FAST = ["--no-progress", "--set", "search.epochs.low=1", "--set", "search.epochs.high=1"]
WARNING = "warning: binding "


def one_line(proc: subprocess.CompletedProcess, field: str, *words: str) -> str:
    """The one error line of a refused command (exit 2), which names the field and the words."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(WARNING)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {field}: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """A folder holding one quick study and its report (each test copies what it damages)."""
    folder = quick_study_in(tmp_path_factory.mktemp("quick"))
    assert run_cli("sgdtune.report", cwd=folder).returncode == 0
    return folder


def limited_to(limit_bytes: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return limit


def test_a_report_rewrite_over_the_file_size_limit_keeps_the_previous_report_and_says_so_in_one_line(quick):
    folder = quick / "reports" / "quick"
    before = {name: (folder / name).read_bytes() for name in ("report.json", "report.html")}
    assert len(before["report.html"]) > 1_000_000  # plotly inlined: the limit below cuts it
    proc = subprocess.run([sys.executable, "-m", "sgdtune.report"], cwd=quick, capture_output=True, text=True,
                          timeout=240, preexec_fn=limited_to(1_000_000), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    one_line(proc, "--out", "File too large", "previous file", "report.html")
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json"]  # no temporary file left


def test_report_out_dev_null_is_refused_and_the_device_stays(quick):
    one_line(run_cli("sgdtune.report", "--out", "/dev/null", cwd=quick), "--out", "must be a folder", "'/dev/null'")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("out,rule", [("FOLDER", "must be a file name, not a folder"),
                                      ("/dev/null", "must be a regular file")])
def test_model_out_must_be_a_file(quick, tmp_path, out, rule):
    out = out.replace("FOLDER", str(tmp_path))
    one_line(run_cli("sgdtune", "model", "--out", out, cwd=quick), "--out", rule, repr(out))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and list(tmp_path.iterdir()) == []


def test_model_out_writes_the_file_whole(quick, tmp_path):
    out = tmp_path / "best.pt"
    out.write_bytes(b"an older file")
    proc = run_cli("sgdtune", "model", "--out", str(out), cwd=quick)
    assert proc.returncode == 0, proc.stderr
    import torch

    assert "0.weight" in torch.load(out, weights_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_mlflow_database_is_one_line_for_report_study_and_model(quick, tmp_path, damage):
    work = tmp_path / "work"
    shutil.copytree(quick, work)
    db = work / "mlruns" / "mlflow.db"
    for sidecar in db.parent.glob("mlflow.db-*"):  # the WAL: the damage must be in the file read
        sidecar.unlink()
    with open(db, "r+b") as f:
        size = db.stat().st_size
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.seek(size // 5)
            f.write(b"\xff" * (size // 3))
    journal = work / "mlruns" / "optuna.journal"
    before = journal.read_bytes()
    # the study command checks both stores read-only before it opens either (stores.check_before_writing)
    for argv, rule in ((["sgdtune.report"], "must be an MLflow store that can be read"),
                       (["sgdtune.study", "experiments/quick.toml", *FAST, "--n-trials", "6"],
                        "must be an SQLite database to serve as an MLflow"),
                       (["sgdtune", "model"], "must be an MLflow store that can be read")):
        one_line(run_cli(*argv, cwd=work), "--tracking-uri", rule, "database disk image is malformed")
    assert journal.read_bytes() == before  # the study refused before its first write: no trial lost or added


def test_model_after_mlflow_gc_removed_the_best_run_is_one_line(tmp_path):
    work = quick_study_in(tmp_path / "gc")  # its own study: gc removes files where the runs recorded them
    study = optuna.load_study(study_name="quick", storage=open_storage(str(work / "mlruns" / "optuna.journal")))
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0])
    run_id = best.user_attrs["mlflow_run_id"]
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    MlflowClient(uri).delete_run(run_id)
    gc = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", uri], capture_output=True,
                        text=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=240)
    assert gc.returncode == 0 and run_id in gc.stdout + gc.stderr, gc.stderr
    one_line(run_cli("sgdtune", "model", cwd=work), "trial", f"trial {best.number}", run_id, "mlflow gc")
    # the files of the logged model gone too (its artifact folder removed)
    shutil.rmtree(work / "mlruns" / "artifacts" / "models")
    one_line(run_cli("sgdtune", "model", "--trial", str(best.number), cwd=work), "trial")


def test_a_binary_file_given_as_the_experiment_is_one_line(tmp_path):
    binary = tmp_path / "model.toml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    one_line(run_cli("sgdtune.study", str(binary), *FAST, cwd=tmp_path), "experiment", "UTF-8 text", "not UTF-8")
    assert not (tmp_path / "mlruns").exists()


# -- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host,loopback,canon,in_url", [
    ("127.0.0.1", True, "127.0.0.1", "127.0.0.1"), ("127.1", True, "127.0.0.1", "127.0.0.1"),
    ("localhost", True, "localhost", "localhost"), ("::1", True, "::1", "[::1]"),
    ("0:0:0:0:0:0:0:1", True, "::1", "[::1]"),
    ("0.0.0.0", False, "0.0.0.0", "127.0.0.1"), ("0", False, "0.0.0.0", "127.0.0.1"), ("::", False, "::", "[::1]"),
    ("10.0.0.5", False, "10.0.0.5", "10.0.0.5"), ("fd00::2", False, "fd00::2", "[fd00::2]"),
    ("example.org", False, "example.org", "example.org"),
])
def test_one_rule_says_which_addresses_are_loopback_and_how_a_url_writes_them(host, loopback, canon, in_url):
    assert (is_loopback(host), canonical(host), url_host(host)) == (loopback, canon, in_url)


@pytest.mark.parametrize("argv", [
    ["ui", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"],  # refused before anything binds
    ["storage-proxy", "--storage", "mlruns/optuna.journal"],
])
@pytest.mark.parametrize("host,warns", [("0.0.0.0", True), ("0", True), ("::1", False)])
def test_ui_and_storage_proxy_warn_alike_for_an_address_that_is_not_loopback(tmp_path, argv, host, warns):
    proc = run_cli("sgdtune", *argv, "--host", host, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith(WARNING)]
    assert len(warnings) == warns, proc.stderr
    if warns:
        assert "no TLS and no authentication" in warnings[0] and f"--host {host}" in warnings[0]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_storage_proxy_serves_on_ipv6_loopback(tmp_path):
    pytest.importorskip("grpc")
    port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "sgdtune", "storage-proxy", "--storage", f"sqlite:///{tmp_path}/o.db",
                              "--host", "::1", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proxy.stdout.readline().startswith("serving the Optuna storage")
        assert f"grpc://[::1]:{port}" in proxy.stdout.readline()
        from sgdtune.store.stores import open_grpc_storage

        storage = open_grpc_storage(f"grpc://[::1]:{port}")
        optuna.create_study(study_name="v6", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 2)
        assert len(optuna.load_study(study_name="v6", storage=open_storage(f"sqlite:///{tmp_path}/o.db")).trials) == 2
    finally:
        proxy.send_signal(signal.SIGTERM)
        out, err = proxy.communicate(timeout=60)
    assert proxy.returncode == 0 and "Traceback" not in err, err
