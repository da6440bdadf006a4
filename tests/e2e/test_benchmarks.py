"""The benchmarks run end to end at a tiny size and write well-formed results.

Only the structure is checked: timing outcomes depend on the machine, and a test that
fails when a shared CI runner is busy would teach people to ignore it.
"""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT, _pg_bin, require

# Every group at a tiny size, one after another: minutes on a shared 2-core machine.
pytestmark = pytest.mark.timeout(900)
GROUPS = {"trainer", "tracking", "handwired", "scale", "startup", "batched", "storage", "busy"}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    if not all(_pg_bin(name) for name in ("initdb", "pg_ctl", "psql")):  # the storage group starts a cluster
        require("PostgreSQL (initdb, pg_ctl, psql) for the storage benchmark", "SGDTUNE_REQUIRE_POSTGRES")
    out = tmp_path_factory.mktemp("bench") / "r.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_result_has_a_name_a_finite_value_a_target_a_unit_and_a_verdict(tiny_results):
    results, _ = tiny_results
    assert isinstance(results, list) and results
    for r in results:
        assert isinstance(r["name"], str) and r["name"]
        assert isinstance(r["value"], float) and math.isfinite(r["value"])
        assert isinstance(r["unit"], str) and r["unit"]
        if r["target"] is None:  # a figure shown for context: no verdict
            assert r["ok"] is None
        else:
            assert isinstance(r["target"], float) and isinstance(r["ok"], bool)
            assert r["op"] in ("<=", ">=", "<")


def test_every_group_reports_at_least_one_checked_figure(tiny_results):
    results, _ = tiny_results
    checked = {r["group"] for r in results if r["ok"] is not None}
    assert checked == GROUPS


def test_the_table_is_printed_with_every_group(tiny_results):
    _, stdout = tiny_results
    assert "sgdtune benchmarks" in stdout
    assert all(f" {group} " in stdout for group in GROUPS)


def test_the_stacking_benchmark_compares_mlp_and_cnn_trials_at_each_tiny_batch_size(tiny_results, monkeypatch,
                                                                                       capsys):
    """The batched group of the run above, printed by `python -m benchmarks.batched`'s own table."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.batched import print_table

    results, _ = tiny_results
    print_table([r for r in results if r["group"] == "batched"], "stacked training")
    out = capsys.readouterr().out
    for b in (8, 64):
        assert f"trials/min stacked vs one by one, B={b}, 1 thread " in out
        assert f"max |final val_loss stacked - alone|, B={b}, 1 thread " in out
        assert f"trials/min stacked vs one by one, CNN B={b}, 1 thread " in out  # torch.func stacking


def test_an_unknown_group_is_refused_with_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "speed", "--out", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    groups = "trainer, tracking, handwired, scale, startup, batched, storage, busy"
    assert f"--only: must name groups among {groups}; got speed" in proc.stderr
    assert not (tmp_path / "r.json").exists()
