"""Shared fixtures. Every test runs offline: MLflow telemetry is off before anything imports it."""

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"


def run_cli(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m sgdtune.<args>` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory holding a copy of experiments/; mlruns/ lands here."""
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_experiment(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
