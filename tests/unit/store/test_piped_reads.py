"""Reads made by the spare writer process (sgdtune/store/piped_reads.py): the same records as a
RunReader here, RunReader's own error when the store is damaged, and a study command whose
training process never imports MLflow."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXPERIMENTS

from sgdtune.errors import InputError
from sgdtune.store import writer_child
from sgdtune.store.piped_reads import PipedReader
from sgdtune.store.run_reader import RunReader
from sgdtune.store.tracking import default_tracking_uri

# The study command, in a process that says at its end which of MLflow's modules it imported.
STUDY_THEN_SAY = """
import sys
from sgdtune.cli import study_main
code = study_main(sys.argv[1:])
print("mlflow imported:", "mlflow" in sys.modules, "exit:", code)
"""


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    """A quick study of 2 trials, run once by the command (tracking on)."""
    folder = tmp_path_factory.mktemp("piped")
    args = [str(EXPERIMENTS / "quick.toml"), "--n-trials", "2", "--no-progress", "--no-profile"]
    done = subprocess.run([sys.executable, "-c", STUDY_THEN_SAY, *args], cwd=folder, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return folder, done.stdout, args


def test_the_study_commands_training_process_imports_no_mlflow_at_its_start_or_its_end(study_folder):
    """Fresh and resumed (the resume check reads the parent run): the writer process made
    every read and write, and the recommendation was printed all the same."""
    folder, first, args = study_folder
    assert "mlflow imported: False exit: 0" in first
    assert "recommendation:" in first
    again = subprocess.run([sys.executable, "-c", STUDY_THEN_SAY, *args[:2], "3", *args[3:]], cwd=folder,
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert "mlflow imported: False exit: 0" in again.stdout
    assert "recommendation:" in again.stdout


def test_piped_reads_return_what_a_run_reader_here_returns(study_folder, monkeypatch):
    folder, _, _ = study_folder
    monkeypatch.chdir(folder)
    uri = default_tracking_uri(folder / "mlruns")
    here = RunReader(uri)
    (experiment,) = [e for e in here.client.search_experiments() if e.name == "quick"]
    (parent_id,) = [r.info.run_id for r in here.client.search_runs([experiment.experiment_id])
                    if r.data.tags.get("sgdtune.role") == "study"]
    writer_child.prestart()
    child = writer_child.spare_child()
    piped = PipedReader(uri)
    parent = piped.find_run(parent_id)
    assert parent == here.find_run(parent_id)
    children = piped.child_runs(parent)
    assert len(children) >= 2 and children == here.child_runs(parent)  # 3 once the resume above ran
    run_id = children[0].run_id
    assert piped.metric_history(run_id, "val_acc") == here.metric_history(run_id, "val_acc")
    assert len(piped.metric_history(run_id, "val_acc")["step"]) >= 2
    assert piped.read_artifact(parent_id, "experiment", ".toml") == here.read_artifact(parent_id, "experiment",
                                                                                        ".toml")
    assert piped.find_run("0" * 32) is None
    assert piped._here is None  # every read above was made by the writer process
    assert writer_child.spare_child() is child  # and it is still the spare


def test_a_damaged_store_raises_run_readers_own_error_through_the_pipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    uri = default_tracking_uri(tmp_path)
    writer_child.prestart()
    with pytest.raises(InputError) as piped:
        PipedReader(uri).find_run("0" * 32)
    with pytest.raises(InputError) as here:
        RunReader(uri).find_run("0" * 32)
    assert str(piped.value) == str(here.value)
    assert "--tracking-uri" in str(piped.value)
    assert writer_child.spare_child() is not None  # a failed read leaves the spare in place


# The study command stopped by bad input, in a process that says which writer process it had.
BAD_INPUT_THEN_SAY = """
import sys
from sgdtune.cli import study_main
from sgdtune.store import writer_child
code = study_main(sys.argv[1:])
print("writer pid:", writer_child.spare_child().proc.pid, "exit:", code)
"""


def test_a_command_stopped_by_bad_input_leaves_no_writer_process_behind(tmp_path):
    """The CLI starts the writer before it checks the stores (its imports overlap torch's); a
    command refused at the check leaves no writer finishing 1-2 s of MLflow imports after it."""
    done = subprocess.run([sys.executable, "-c", BAD_INPUT_THEN_SAY, str(EXPERIMENTS / "quick.toml"),
                           "--tracking-uri", f"sqlite:///{tmp_path}", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    pid = int(done.stdout.split("writer pid:")[1].split()[0])
    assert "exit: 2" in done.stdout and "--tracking-uri" in done.stderr
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped as the command exited
