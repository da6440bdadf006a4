"""No secret anywhere sgdtune writes or prints: a password planted in every URL form, a study
and its report run, then every byte written searched for it (files, the console of every
process, both databases, a tracking server's store). The masking rules: test_redact.py."""

import os
import subprocess

import optuna
import pytest
from conftest import EXPERIMENTS, PG_PASSWORD, _pg_bin, free_port, mlflow_server_at, run_cli
from mlflow import MlflowClient

from sgdtune.store.stores import open_storage

FAST = ["--no-progress", "--set", "search.epochs.low=1", "--set", "search.epochs.high=1"]


def test_a_fail_reason_quoting_a_url_is_masked_in_its_tag(tmp_path):
    from sgdtune.store.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "s")
    parent = tracker.start_parent_run({}, {})
    run = tracker.start_trial_run(parent, 0, {}, {})
    tracker.end_trial_run(run, "FAIL", {}, fail_reason="OperationalError: postgresql://u:PW-123@h/db refused")
    tag = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run).data.tags["sgdtune.fail_reason"]
    assert tag == "OperationalError: postgresql://u:***@h/db refused"


def pg_dump(url: str) -> str:
    """Every table of a database as SQL text (pg_dump, password from the environment)."""
    rest = url.split("@", 1)[1]  # 127.0.0.1:PORT/NAME
    host, _, tail = rest.partition(":")
    port, _, name = tail.partition("/")
    out = subprocess.run([_pg_bin("pg_dump"), "-h", host, "-p", port, "-U", "sgd", name], capture_output=True,
                         text=True, check=True, env={**os.environ, "PGPASSWORD": PG_PASSWORD})
    return out.stdout


@pytest.mark.postgres
def test_a_planted_password_is_nowhere_sgdtune_writes(workdir, postgres, tmp_path_factory):
    optuna_db, mlflow_db = postgres("secrets_optuna"), postgres("secrets_mlflow")
    where = optuna_db.split("@", 1)[1].rsplit("/", 1)[0]  # 127.0.0.1:PORT
    storage_query = f"postgresql://sgd@{where}/secrets_optuna?password={PG_PASSWORD}"
    tracking_query = f"postgresql://sgd@{where}/secrets_mlflow?sslmode=disable&password={PG_PASSWORD}"
    # The experiment file (outside the working directory: it is input) holds a URL password too.
    inputs = tmp_path_factory.mktemp("inputs")
    experiment = inputs / "secret.toml"
    experiment.write_text((EXPERIMENTS / "quick.toml").read_text().replace(
        'name = "quick"', f'name = "secret"\nstorage = "{optuna_db}"'))

    runs = [
        # storage from the file (user:PW@), tracking with ?password=
        run_cli("sgdtune.study", str(experiment), *FAST, "--n-trials", "2", "--tracking-uri", tracking_query,
                cwd=workdir),
        # resumed: storage with ?password= as a flag, tracking with user:PW@, and the report
        run_cli("sgdtune.study", str(experiment), *FAST, "--n-trials", "3", "--storage", storage_query,
                "--tracking-uri", mlflow_db, "--report", cwd=workdir),
        run_cli("sgdtune.report", "--study-name", "secret", "--storage", storage_query, "--tracking-uri",
                tracking_query, "--out", "reports-again", cwd=workdir),
    ]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    refusals = [
        run_cli("sgdtune.study", str(experiment), *FAST, "--storage", f"postgresql://:{PG_PASSWORD}@{where}/x",
                cwd=workdir),
        run_cli("sgdtune.study", str(experiment), *FAST, "--tracking-uri", f"http://sgd:{PG_PASSWORD}@127.0.0.1:"
                f"{free_port()}", cwd=workdir),
    ]
    for proc in refusals:
        assert proc.returncode == 2 and ":***@" in proc.stderr, proc.stderr

    # What was written holds the masked forms (so the search below looks at real content).
    study = optuna.load_study(study_name="secret", storage=open_storage(optuna_db))
    assert len(study.trials) == 3
    parent = MlflowClient(mlflow_db).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["sgdtune.storage"] == f"postgresql://sgd@{where}/secrets_optuna?password=***"
    assert "--tracking-uri 'postgresql://sgd:***@" in parent.data.tags["sgdtune.command"]
    report = (workdir / "reports" / "secret" / "report.json").read_text()
    assert f'storage = \\"postgresql://sgd:***@{where}/secrets_optuna\\"' in report  # the recorded file, masked
    written = [p for p in workdir.rglob("*") if p.is_file() and "experiments" not in p.relative_to(workdir).parts]
    names = {p.name for p in written}
    assert {"report.json", "report.html", "secret.toml"} <= names, names  # secret.toml: the uploaded copy

    secret = PG_PASSWORD.encode()
    leaks = [str(p) for p in written if secret in p.read_bytes()]
    leaks += [f"output of run {i}" for i, p in enumerate(runs + refusals) if PG_PASSWORD in p.stdout + p.stderr]
    for db in (optuna_db, mlflow_db):
        dump = pg_dump(db)
        assert "secret" in dump  # the study's (or its experiment's) rows are there
        if PG_PASSWORD in dump:
            leaks.append(f"database {db.rsplit('/', 1)[1]}")
    assert leaks == []


SERVER_SECRET = "Srv-s3cret-7c2e"  # must appear nowhere sgdtune prints or writes


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, reaper):
    """A real `mlflow server` on loopback with a SQLite store: (URL, its folder). It ignores
    credentials, so a tracking URI with a password in it reaches it as users write them."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_at(f"sqlite:///{root}/mlflow.db", root, reaper) as (url, _):
        yield url, root


@pytest.mark.parametrize("workers", [1, 2])
def test_a_study_on_a_tracking_server_with_a_password_prints_and_writes_no_secret(workdir, sqlite_server, workers):
    url, server_root = sqlite_server
    tracking_uri = url.replace("http://", f"http://u:{SERVER_SECRET}@")
    name = f"srv-w{workers}"
    proc = run_cli("sgdtune.study", "experiments/quick.toml", *FAST, "--n-trials", "2", "--study-name", name,
                   "--tracking-uri", tracking_uri, "--workers", str(workers), "--report", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    # MLflow's own lines, printed by the writer process (of each worker), reach the console masked.
    assert f"View run trial-0 at: {url.replace('http://', 'http://u:***@')}/#/experiments/" in proc.stdout
    report = (workdir / "reports" / name / "report.json").read_text()
    assert "viewStateShareKey=sgdtune-trials" in report  # the MLflow link, readable: not a secret parameter
    assert f"http://u:***@{url.removeprefix('http://')}" in report

    leaks = [stream for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)) if SERVER_SECRET in text]
    written = [p for root in (workdir, server_root) for p in root.rglob("*") if p.is_file()]
    leaks += [str(p) for p in written if SERVER_SECRET.encode() in p.read_bytes()]
    assert leaks == []
