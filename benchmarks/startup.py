"""Start-up: from the command's start to the first trial's first update.

`python -m sgdtune.study experiments/quick.toml --n-trials 1 --no-progress` in a
subprocess, under a bootstrap (MARK_AT_FIRST_STEP) that runs the module as `-m` would and
writes time.time() to a file at the process's first optimizer step: a global torch.optim
post-step hook, registered as torch.optim is imported (nothing is imported early) and
removed at its first call, so the trainer carries no benchmark code. The figure is that
time minus the time just before the process was started. On an existing
store (the directory of an earlier run: MLflow database and Optuna journal there, a new
study name each time) and on a new one (MLflow creates its database first).

Beside it, the floor: a bare PyTorch process that imports torch, builds the same MLP and
makes one SGD update (torch's import and the torch._dynamo import that the first optimizer
triggers). Alternated, median of the rounds. Then `python -X importtime` of one run,
summed by top-level package.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from .common import Check

GROUP = "startup"
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
COMMAND = ["-m", "sgdtune.study", "experiments/quick.toml", "--n-trials", "1", "--no-progress"]
MARK_FIRST_UPDATE_ENV = "SGDTUNE_MARK_FIRST_UPDATE"  # the file the first update's time is written to
# `python -c MARK_AT_FIRST_STEP module args...` runs `python -m module args...` and marks its first
# optimizer step. The finder only compares names until torch.optim.optimizer is imported.
MARK_AT_FIRST_STEP = f"""
import importlib.machinery, os, runpy, sys, time

class AtFirstOptimizerStep:
    def find_spec(self, name, path=None, target=None):
        if name != "torch.optim.optimizer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module

        def exec_and_hook(module):
            exec_module(module)

            def mark(*_):
                handle.remove()
                with open(os.environ["{MARK_FIRST_UPDATE_ENV}"], "w") as f:
                    f.write(repr(time.time()))

            handle = module.register_optimizer_step_post_hook(mark)

        spec.loader.exec_module = exec_and_hook
        return spec

sys.meta_path.insert(0, AtFirstOptimizerStep())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
BARE_TORCH = f"""
import os, time
import torch
import torch.nn.functional as F
from torch import nn
model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss = F.cross_entropy(model(torch.randn(16, 64)), torch.randint(0, 10, (16,)))
optimizer.zero_grad(); loss.backward(); optimizer.step()
open(os.environ["{MARK_FIRST_UPDATE_ENV}"], "w").write(repr(time.time()))
"""


def workdir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="sgdtune-startup-"))
    shutil.copytree(EXPERIMENTS, root / "experiments")
    return root


def run_command(args: list[str], cwd: Path) -> float:
    """Seconds from just before `python *args` starts until it exits (status 0 required)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def to_first_update(args: list[str], cwd: Path) -> float:
    """Seconds from just before the process starts to its first update: `-m module ...` runs
    under MARK_AT_FIRST_STEP, `-c code` must write the mark itself."""
    mark = cwd / f"first-update-{time.monotonic_ns()}"
    env = {**os.environ, MARK_FIRST_UPDATE_ENV: str(mark), "PYTHONUNBUFFERED": "1"}
    if args[0] == "-m":
        args = ["-c", MARK_AT_FIRST_STEP, *args[1:]]
    t0 = time.time()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not mark.exists():
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(mark.read_text()) - t0


def import_breakdown(cwd: Path) -> dict[str, float]:
    """Seconds of import per top-level package in one run (python -X importtime, self times)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *COMMAND, "--study-name", "importtime"],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ})
    totals: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line[len("import time:"):].split("|"))
        package = name.split(".")[0]
        if name.startswith(("torch._dynamo", "torch._functorch", "torch._inductor")):
            package = "torch._dynamo etc. (first optimizer)"
        totals[package] += int(self_us) / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def run(tiny: bool = False) -> list[Check]:
    rounds = 1 if tiny else 5
    warm_dir = workdir()
    roots = [warm_dir]
    try:
        cold, warm, untracked, bare = [], [], [], []
        if tiny:  # --tiny: one run, on a store made here (CI checks that this runs, not the figures)
            from mlflow import MlflowClient

            from sgdtune.store.tracking import default_tracking_uri

            MlflowClient(tracking_uri=default_tracking_uri(warm_dir / "mlruns")).search_experiments()
        else:  # the first run makes warm_dir's store: it is the first new-store figure
            cold.append(to_first_update([*COMMAND, "--study-name", "cold0"], warm_dir))
        for r in range(rounds):
            warm.append(to_first_update([*COMMAND, "--study-name", f"warm{r}"], warm_dir))
            if not tiny:
                bare.append(to_first_update(["-c", BARE_TORCH], warm_dir))
                untracked.append(
                    to_first_update([*COMMAND, "--study-name", f"untracked{r}", "--no-tracking"], warm_dir))
            if r + 1 < rounds:
                roots.append(workdir())
                cold.append(to_first_update([*COMMAND, "--study-name", f"cold{r + 1}"], roots[-1]))
        imports = {} if tiny else import_breakdown(warm_dir)
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    w = statistics.median(warm)
    b = statistics.median(bare) if bare else None
    floor = f"; a bare PyTorch process: {b:.2f} s (x{w / b:.2f})" if b else ""
    checks = [Check(GROUP, "command start to first update, existing store", w, 3.0, "<", "s",
                    f"median of {rounds}{floor}; quick.toml, 1 trial")]
    if cold:
        c = statistics.median(cold)
        checks.append(Check(GROUP, "command start to first update, new store", c, None, "", "s",
                            f"median of {len(cold)}; MLflow creates its database ({c - w:+.2f} s vs existing)"))
    if untracked:
        checks.append(Check(GROUP, "command start to first update, --no-tracking", statistics.median(untracked), None,
                            "", "s", f"median of {rounds}; the difference is what MLflow adds before the first update"))
    if b:
        checks.append(Check(GROUP, "bare PyTorch: import, one SGD update", b, None, "", "s",
                            f"median of {rounds}, alternated with the runs above: the floor"))
    checks += [Check(GROUP, f"imports: {package}", seconds, None, "", "s",
                     "python -X importtime, self times summed, one run")
               for package, seconds in list(imports.items())[:8]]
    return checks
