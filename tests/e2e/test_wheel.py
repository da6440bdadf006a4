"""The wheel works on its own: built (`pip wheel --no-deps`), installed (not editable) into a
fresh venv that sees the shared packages through a .pth file (nothing is downloaded), then in a
folder outside the checkout `python -m sgdtune.study` finds its default experiment (package
data) and `report` and `surface` their page templates."""

import filecmp
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("PYTHONPATH", None)


def shared_site_packages() -> list[str]:
    """The current interpreter's site-packages folders outside its own venv: the shared packages
    (a venv's own site-packages holds the editable sgdtune and ensurepip's old setuptools)."""
    own = sysconfig.get_paths()["purelib"]
    dirs = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    return [p for p in dirs if p != own] or dirs


def run(args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_packaged_experiments_are_the_top_level_ones():
    packaged = ROOT / "sgdtune" / "experiments"
    names = sorted(p.name for p in (ROOT / "experiments").glob("*.toml"))
    assert names and sorted(p.name for p in packaged.glob("*.toml")) == names
    assert filecmp.cmpfiles(ROOT / "experiments", packaged, names, shallow=False)[0] == names


@pytest.mark.slow
def test_an_installed_wheel_runs_study_report_and_surface_outside_the_checkout(tmp_path):
    venv = tmp_path / "V"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    purelib = next((venv / "lib").glob("python*/site-packages"))
    (purelib / "zz.pth").write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in shared_site_packages()))
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", ROOT],
        cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("sgdtune-*.whl")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = run([python, "-c", "import sgdtune; print(sgdtune.__file__)"], cwd=outside).stdout.strip()
    assert Path(where).is_relative_to(purelib)  # the installed copy, not the checkout
    study = run([python, "-m", "sgdtune.study", "--n-trials", "2", "--set", "search.epochs.low=1",
                 "--set", "search.epochs.high=1", "--no-progress"], cwd=outside)
    assert "batch_tradeoff" in study.stdout + study.stderr
    run([python, "-m", "sgdtune.report", "--study-name", "batch_tradeoff"], cwd=outside)
    assert (outside / "reports/batch_tradeoff/report.html").stat().st_size > 10_000
    assert "usage:" in run([python, "-m", "sgdtune.surface", "--help"], cwd=outside).stdout
    run([python, "-m", "sgdtune.surface", "--out", "s.html", "--n", "100"], cwd=outside)
    assert (outside / "s.html").stat().st_size > 10_000
