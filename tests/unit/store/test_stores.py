"""Bad stores through the real command line: each an exit 2 with one line naming the flag and
the problem, no traceback, nothing written; a torn journal repaired, a store that lost the
study's runs refused, the schema created by several processes at once, names that are paths."""

import gc
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import EXPERIMENTS, free_port, run_cli
from optuna.trial import TrialState

from sgdtune.errors import InputError
from sgdtune.names import check_name
from sgdtune.report.write import report_folder
from sgdtune.store.journal import repair_journal
from sgdtune.store.stores import open_storage

FAST = ["--no-progress", "--n-trials", "1", "--set", "search.epochs.low=1", "--set", "search.epochs.high=1"]


def refused(proc: subprocess.CompletedProcess, flag: str, *words: str) -> str:
    """The one error line of a refused command (exit 2), which names the flag and the words."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {flag}: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def trials_in(storage: str, name: str = "quick") -> list:
    """The study's trials; [] where the storage holds no such study (or does not exist)."""
    if "://" not in storage and not Path(storage).exists():
        return []
    store = open_storage(storage)
    if name not in [s.study_name for s in store.get_all_studies()]:
        return []
    return optuna.load_study(study_name=name, storage=store).get_trials()


def no_mlflow_run(cwd: Path) -> bool:
    db = cwd / "mlruns" / "mlflow.db"
    if not db.exists() or db.stat().st_size == 0:
        return True
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return not any(client.search_runs([e.experiment_id]) for e in client.search_experiments())


def study(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_cli("sgdtune.study", "experiments/quick.toml", *FAST, *args, cwd=cwd, timeout=timeout)


# -- a store that cannot be opened ------------------------------------------------------------


def test_storage_naming_a_folder_is_refused(workdir):
    (workdir / "a-folder").mkdir()
    line = refused(study(workdir, "--storage", "a-folder"), "--storage", "names a folder", "a-folder")
    assert "a-folder/optuna.journal" in line  # what to give instead
    refused(study(workdir, "--storage", f"sqlite:///{workdir}/a-folder"), "--storage", "names a folder",
            "a-folder/optuna.db")
    assert list((workdir / "a-folder").iterdir()) == []
    assert no_mlflow_run(workdir)


def test_unsupported_scheme_lists_the_allowed_ones(workdir):
    refused(study(workdir, "--storage", "redis://127.0.0.1:6379/0"), "--storage",
            "sqlite://, postgresql://, mysql://", "'redis://127.0.0.1:6379/0'")
    assert no_mlflow_run(workdir) and trials_in("mlruns/optuna.journal") == []


def _without_root_powers() -> list[str]:
    """Where the tests run as root (who writes anywhere), drop the capability that lets root
    ignore permissions, so a read-only folder is read-only to the command too."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root and setpriv is missing: no folder is read-only to root")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("storage", ["ro/optuna.journal", "sqlite:///ro/optuna.db"])
def test_storage_in_a_read_only_folder_is_refused(workdir, storage):
    (workdir / "ro").mkdir()
    os.chmod(workdir / "ro", 0o555)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*_without_root_powers(), sys.executable, "-m", "sgdtune.study", "experiments/quick.toml",
                           *FAST, "--storage", storage], cwd=workdir, capture_output=True, text=True, timeout=240,
                          env=env)
    refused(proc, "--storage", "is read-only", "'ro'", repr(storage))
    assert list((workdir / "ro").iterdir()) == []
    assert not (workdir / "mlruns" / "mlflow.db").exists()


def test_the_readme_heartbeat_recipe_works_in_a_fresh_directory(workdir):
    """sqlite:///mlruns/optuna.db before mlruns/ exists: the folder is made (was: exit 1)."""
    proc = study(workdir, "--storage", "sqlite:///mlruns/optuna.db", "--heartbeat", "2")
    assert proc.returncode == 0, proc.stderr
    assert "FutureWarning" not in proc.stderr
    assert [t.state for t in trials_in("sqlite:///mlruns/optuna.db")] == [TrialState.COMPLETE]


@pytest.mark.postgres
def test_a_wrong_postgresql_password_is_refused_and_not_shown(workdir, postgres):
    url = postgres("stores_auth").replace(":Pw-", ":Wrong-")
    line = refused(study(workdir, "--storage", url), "--storage", "authentication failed", "postgresql://sgd:***@")
    assert "Wrong-" not in line


def test_a_refused_database_port_is_refused_naming_it(workdir):
    port = free_port()
    refused(study(workdir, "--storage", f"postgresql://sgd:Sekrit-77@127.0.0.1:{port}/x"), "--storage",
            "connection refused", f"postgresql://sgd:***@127.0.0.1:{port}/x")


def test_an_unreachable_tracking_server_is_refused_before_any_trial(workdir):
    port = free_port()
    # The server is probed first (2 tries of 5 s): exit 2 at once, where MLflow's own
    # retries took 253 s and a trial was failed first; the timeout makes a regression fail.
    proc = study(workdir, "--tracking-uri", f"http://127.0.0.1:{port}", timeout=60)
    refused(proc, "--tracking-uri", "cannot connect to the MLflow server", "2 tries of 5 s", f"127.0.0.1:{port}")
    assert trials_in("mlruns/optuna.journal") == []
    assert no_mlflow_run(workdir)


# -- the journal: damaged in the middle refused, torn at the end repaired -----------------------


def _journal_with_trials(path: Path, n: int) -> list:
    storage = open_storage(str(path))
    s = optuna.create_study(study_name="quick", storage=storage, directions=["maximize"])
    for i in range(n):
        s.add_trial(optuna.trial.create_trial(params={"lr": 0.1 * (i + 1)}, value=i / 10,
                                              distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1)}))
    return [(t.params, t.values) for t in s.get_trials()]


def test_garbage_in_a_journal_is_refused_and_the_file_kept(workdir):
    journal = workdir / "mlruns" / "optuna.journal"
    journal.parent.mkdir()
    _journal_with_trials(journal, 2)
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b"#garbage#" + lines[1][9:]
    damaged = b"\n".join(lines)
    journal.write_bytes(damaged)
    refused(study(workdir), "--storage", f"line 2 of {len(lines) - 1} is damaged", "restore a copy")
    assert journal.read_bytes() == damaged
    assert not list(journal.parent.glob("*.torn-*"))
    assert no_mlflow_run(workdir)

    journal.write_bytes(b"hello, not a journal\n")
    refused(study(workdir), "--storage", "not an Optuna journal record")


def test_a_journal_with_a_torn_last_record_is_repaired_with_a_backup(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    before = _journal_with_trials(journal, 3)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code":5,"worker_id":"ab')  # a crash in the middle of a write
    storage = open_storage(str(journal))
    err = capsys.readouterr().err
    assert "repaired the Optuna journal" in err and "cut off its last record" in err and "(28 bytes)" in err
    assert journal.read_bytes() == whole
    backups = list(tmp_path.glob("optuna.journal.torn-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == whole + b'{"op_code":5,"worker_id":"ab'
    s = optuna.load_study(study_name="quick", storage=storage)
    assert [(t.params, t.values) for t in s.get_trials()] == before
    # The next write starts a line of its own: every trial stays readable.
    s.add_trial(optuna.trial.create_trial(params={"lr": 0.5}, value=0.5,
                                          distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1)}))
    again = optuna.load_study(study_name="quick", storage=open_storage(str(journal)))
    assert len(again.get_trials()) == 4 and capsys.readouterr().err == ""


def test_a_last_record_that_lost_only_its_newline_is_kept(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    before = _journal_with_trials(journal, 2)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-1])
    assert repair_journal(journal).name.startswith("optuna.journal.torn-")
    assert "ended its last record" in capsys.readouterr().err
    assert journal.read_bytes() == whole
    assert [(t.params, t.values) for t in optuna.load_study(study_name="quick", storage=open_storage(
        str(journal))).get_trials()] == before


def test_an_sqlite_file_given_as_a_journal_says_how_to_pass_it(tmp_path):
    db = tmp_path / "optuna.db"
    open_storage(f"sqlite:///{db}")
    with pytest.raises(InputError, match=r"an SQLite database: pass it as sqlite:///PATH"):
        open_storage(str(db))


def test_a_torn_journal_through_the_cli_keeps_every_trial(workdir):
    assert study(workdir, "--n-trials", "2").returncode == 0
    journal = workdir / "mlruns" / "optuna.journal"
    before = [(t.number, t.params, t.values) for t in trials_in(str(journal))]
    journal.write_bytes(journal.read_bytes() + b'{"op_code":4,"worker_id":"x","study_id":0,"datetime_st')
    proc = study(workdir, "--n-trials", "3")
    assert proc.returncode == 0, proc.stderr
    assert "repaired the Optuna journal mlruns/optuna.journal" in proc.stderr
    after = trials_in(str(journal))
    assert [(t.number, t.params, t.values) for t in after[:2]] == before
    assert [t.state for t in after] == [TrialState.COMPLETE] * 3


# -- an MLflow store that lost the study's runs -------------------------------------------------


def test_an_emptied_mlflow_store_is_refused_not_replaced(workdir):
    assert study(workdir).returncode == 0
    parent = trials_in("mlruns/optuna.journal")  # one trial, with its run
    recorded = optuna.load_study(study_name="quick", storage=open_storage("mlruns/optuna.journal")).user_attrs
    port = free_port()  # the report, too, refuses a server that does not answer, in seconds
    proc = run_cli("sgdtune.report", "--tracking-uri", f"http://127.0.0.1:{port}", cwd=workdir, timeout=60)
    refused(proc, "--tracking-uri", "cannot connect to the MLflow server", f"127.0.0.1:{port}")
    db = workdir / "mlruns" / "mlflow.db"
    for extra in workdir.glob("mlruns/mlflow.db-*"):
        extra.unlink()
    db.write_bytes(b"")  # truncated to 0 bytes
    line = refused(study(workdir, "--n-trials", "2"), "--tracking-uri", recorded["mlflow_parent_run_id"],
                   "mlruns/optuna.journal", str(db), "--study-name")
    assert "does not hold" in line
    assert db.stat().st_size == 0  # not silently made a new, empty store
    assert len(trials_in("mlruns/optuna.journal")) == len(parent) == 1


# -- PostgreSQL: the schema created by several processes at once ------------------------------


@pytest.mark.postgres
def test_three_threads_create_the_schema_of_a_fresh_database_at_once(postgres):
    url = postgres("stores_race_threads")
    barrier, results = threading.Barrier(3), []

    def open_one():
        barrier.wait()
        try:
            results.append(open_storage(url))
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            results.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, optuna.storages.RDBStorage) for r in results), results


@pytest.mark.postgres
def test_three_processes_start_one_study_on_a_fresh_postgresql_database(workdir, postgres):
    url = postgres("stores_race")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "sgdtune.study", "experiments/quick.toml", *FAST, "--storage",
                               url, "--no-tracking"], cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    trials = trials_in(url)
    # n_trials = 1: one trial completes; a process that asked for a trial at the same moment
    # gets a surplus one, failed before it drew anything and not counted (strategy.check_not_surplus)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    surplus = [t for t in trials if t.user_attrs.get("fail_kind") == "surplus"]
    assert len(complete) == 1 and len(complete) + len(surplus) == len(trials), [t.state for t in trials]


# -- names that are not paths -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "../../x", "/tmp/x", "a/b", "a\\b", ".hidden", "x\ny"])
def test_study_names_that_are_paths_are_refused(name):
    with pytest.raises(InputError, match=r"^--study-name: must be 1-128 letters, digits"):
        check_name(name)


def test_study_and_report_refuse_a_study_name_that_is_a_path(workdir):
    refused(study(workdir, "--study-name", "..", "--report"), "--study-name", "not starting with '.'", "'..'")
    refused(study(workdir, "--study-name", "../../x"), "--study-name", "no '/'")
    assert not (workdir / "report.html").exists() and not (workdir / "mlruns").exists()
    proc = run_cli("sgdtune.report", "--study-name", "..", cwd=workdir)
    refused(proc, "--study-name", "'..'")


def test_the_report_folder_must_lie_inside_out(tmp_path):
    assert report_folder(tmp_path / "reports", "quick") == tmp_path / "reports" / "quick"
    for name in ("..", "../x", str(tmp_path / "elsewhere")):
        with pytest.raises(InputError, match="must name a folder inside"):
            report_folder(tmp_path / "reports", name)


def test_heartbeats_use_the_retry_api_that_is_not_deprecated(tmp_path):
    gc.collect()  # a PostgreSQL connection an earlier test on this worker left: its ResourceWarning now, not below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = open_storage(f"sqlite:///{tmp_path}/deep/optuna.db", heartbeat=2)
    # No FutureWarning (nor Optuna's "experimental" notes); the collector may still finalize another test's object.
    assert [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)] == []
    handler = storage.heartbeat_stale_trial_callback
    assert isinstance(handler.retry, optuna.storages.RetryHeartbeatStaleTrialCallback)
    # A stale trial (its worker lost) is queued again with the same parameters.
    s = optuna.create_study(study_name="hb", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... used with Study.optimize": ask is enough here
        trial = s.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1.0)})
    s.tell(trial, state=TrialState.FAIL)
    handler(s, s.trials[0])
    queued = s.trials[1]
    assert queued.state == TrialState.WAITING and queued.params == s.trials[0].params
    assert queued.system_attrs["failed_trial"] == 0


# -- nothing written on a refusal: both stores checked, read-only, before either is opened -----


def listing(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under `root` (the experiments aside): size and sha256 of each file.
    An SQLite -shm file is left out: it is the shared-memory index that every reader of a WAL
    database, a read-only one included, updates; it holds no data (the -wal file does)."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        if "experiments" in p.relative_to(root).parts or p.name.endswith("-shm"):
            continue
        out[str(p.relative_to(root))] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) \
            if p.is_file() else (-1, "folder")
    return out


@pytest.fixture(scope="module")
def one_study(tmp_path_factory) -> Path:
    """A folder holding one quick study of one trial (mlruns/optuna.journal, mlruns/mlflow.db)."""
    cwd = tmp_path_factory.mktemp("one_study")
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    assert study(cwd).returncode == 0
    return cwd


SAME_FILE = r"^error: --storage: must be another file than the MLflow store \(--tracking-uri\)"
NOT_SQLITE = r"^error: --tracking-uri: must be an SQLite database to serve as an MLflow store; this file is something"
REFUSALS = {  # the flags; the one line (a regular expression); {d} is the working folder
    "a text file as the MLflow store": (["--tracking-uri", "sqlite:///{d}/notadb.db"], NOT_SQLITE),
    "a folder as the MLflow store": (["--tracking-uri", "sqlite:////tmp"],
                                     r"^error: --tracking-uri: must be a tracking store MLflow can open; got "
                                     r"'sqlite:////tmp' \(it names a folder, not a file"),
    # in a fresh folder the default MLflow store is that same file, not yet created
    "the MLflow database as the Optuna storage": (
        ["--storage", "sqlite:///{d}/mlruns/mlflow.db"],
        r"^error: --storage: must be its own SQLite database to serve as an Optuna storage, or a new file; it is "
        r"the MLflow store|" + SAME_FILE),
    "the Optuna journal as the MLflow store": (["--tracking-uri", "sqlite:///{d}/mlruns/optuna.journal"],
                                               NOT_SQLITE + "|" + SAME_FILE),
    "one new file for both stores": (["--storage", "sqlite:///{d}/both.db", "--tracking-uri",
                                      "sqlite:///{d}/both.db"], SAME_FILE),
    "the MLflow database as the journal": (["--storage", "mlruns/mlflow.db"], SAME_FILE),
    "an Optuna database as the MLflow store": (
        ["--storage", "sqlite:///{d}/o.db", "--tracking-uri", "sqlite:///{d}/optuna.db"],
        r"^error: --tracking-uri: must be its own SQLite database to serve as an MLflow store, or a new file; it is "
        r"an Optuna storage"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh folder", "beside a study"])
def test_a_refused_store_leaves_every_file_and_folder_as_it_was(case, fresh, one_study, tmp_path):
    import re

    cwd = tmp_path / "w"
    if fresh:
        shutil.copytree(one_study / "experiments", cwd / "experiments")
    else:
        shutil.copytree(one_study, cwd)
    (cwd / "notadb.db").write_text("not a database\n")
    optuna.create_study(storage=f"sqlite:///{cwd}/optuna.db", study_name="other")  # an Optuna database
    args, line = REFUSALS[case]
    before = listing(cwd)
    proc = study(cwd, *(a.format(d=cwd) for a in args))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and re.search(line, proc.stderr), proc.stderr
    assert listing(cwd) == before


def test_a_database_with_another_store_s_tables_is_refused_before_it_is_opened(tmp_path):
    """The rule behind the refusals above, at the API: read-only, and naming whose tables they are."""
    from sgdtune.store.checks import check_before_writing

    db = tmp_path / "optuna.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="x")
    size = db.stat().st_size
    with pytest.raises(InputError, match=r"^--tracking-uri: must be its own SQLite database to serve as an MLflow "
                                         r"store, or a new file; it is an Optuna storage \(--storage\)"):
        check_before_writing(str(tmp_path / "j.journal"), f"sqlite:///{db}")
    with pytest.raises(InputError, match=r"^--storage: must be another file than the MLflow store"):
        check_before_writing(f"sqlite:///{db}", f"sqlite:///{tmp_path}/../{tmp_path.name}/optuna.db")
    check_before_writing(f"sqlite:///{db}", f"sqlite:///{tmp_path}/new/mlflow.db")  # its own kind: fine
    assert db.stat().st_size == size and not (tmp_path / "new").exists() and not (tmp_path / "j.journal").exists()


# -- working folders whose names mean something in a URL ---------------------------------------


@pytest.mark.parametrize("name", ["w_q?x=1", "w_pc%41", "w_h#1"])
def test_a_working_folder_named_with_url_characters_keeps_the_stores_inside_it(tmp_path, name):
    import sqlite3

    from sgdtune.store.tracking import sqlite_path

    cwd = tmp_path / name
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    done = study(cwd, "--report")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no store beside the folder
    (shown,) = [line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if line.startswith("mlflow store:")]
    db = cwd / "mlruns" / "mlflow.db"
    assert sqlite_path(shown) == db  # the console names the file that was used
    with sqlite3.connect(db) as c:
        assert "trial-0" in {row[0] for row in c.execute("SELECT name FROM runs")}
    assert (cwd / "mlruns" / "optuna.journal").stat().st_size > 0
    assert (cwd / "reports" / "quick" / "report.json").is_file()
    assert list((cwd / "mlruns" / "artifacts").rglob("quick.toml"))  # the experiment file, with its runs


@pytest.mark.parametrize("path", ["/tmp/w_q?x=1/mlflow.db", "/tmp/w_pc%41/m.db", "/tmp/a#b/m.db", "rel/plain.db",
                                  "/tmp/sp ace/@:=/m.db"])
def test_a_store_url_built_from_a_path_reads_back_as_that_path(path):
    from sqlalchemy.engine import make_url

    from sgdtune.store.tracking import sqlite_path, sqlite_uri

    assert make_url(sqlite_uri(path)).database == path  # as MLflow's and Optuna's SQLAlchemy read it
    assert sqlite_path(sqlite_uri(path)) == Path(path)
