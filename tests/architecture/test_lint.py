"""The tree is ruff-clean under the rules configured in pyproject.toml."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_finds_nothing_in_the_tree():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
