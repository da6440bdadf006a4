"""Reclaiming the trials of dead processes (sgdtune/study/reclaim.py): the process identity it
rests on. Reclaiming itself, after kill -9 of each process of a study: tests/e2e/test_faults.py."""

import os
import subprocess
import sys

from sgdtune.study.reclaim import alive, process_identity, start_time


def test_a_process_is_alive_only_with_its_own_start_time():
    me = process_identity()
    assert me["pid"] == os.getpid() and alive(me["pid"], me["start"])
    assert not alive(me["pid"], me["start"] + "0")  # the same pid, another process: a reused pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = start_time(child.pid)
    child.wait()
    assert started is not None and not alive(child.pid, started)
