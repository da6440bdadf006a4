"""Re-run the experiments the README and docs/ quote and keep their reports here.

    python docs/results/regenerate.py                      # all of them, one after another
    python docs/results/regenerate.py critical_batch quick # some

Each experiment runs as `python -m sgdtune.study experiments/<name>.toml --report --no-progress`
in a fresh temporary directory holding a copy of experiments/ (so no earlier study is resumed and
nothing is written into the checkout), then:

- `reports/<study>/report.json` is kept as `docs/results/<name>.json`: every figure the README, docs/results.md and
  docs/science.md quote is read from these files (tests/architecture/test_readme_figures.py checks the text
  against them). Timings, memory and MLflow ids sit under its `volatile` key; the rest comes out the
  same on a rerun with the same seed (docs/usage.md, "Reports and the UIs"), apart from the seconds in
  `recommendation` and `time_to_accuracy`, which rest on measured step times.
- the console's closing lines (the table of top trials, the trial counts and the recommendation)
  are kept as `docs/results/<name>.txt`, with the command and this run's wall seconds on top; the
  store paths, which name the temporary directory, are left out.

A report.json over 1 MB is kept without its per-epoch learning curves (`learning_curves`,
`history`), and the .txt says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPERIMENTS = ROOT / "experiments"

# The experiments whose figures the docs quote, in the order they are run (cheapest first).
QUOTED = [
    "batch_tradeoff",
    "fixed_updates",
    "linear_scaling",
    "critical_batch",
    "mnist1d_tradeoff",
    "mnist1d_mlp",
    "mnist1d_cnn",
    "mnist1d_fixed_updates",
    "mnist1d_linear_scaling",
]
MAX_JSON_BYTES = 1_000_000
# Console lines that name the temporary directory or the MLflow UI: not a result.
_DROPPED_PREFIXES = ("optuna storage:", "mlflow store:", "open the MLflow UI", "  mlflow ui ", "  then http", "report:")


def closing_lines(stdout: str) -> list[str]:
    """The console's last block: from the top-trials table's title to the end, store paths left out."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "top trials of study" in line), 0)
    return [line for line in lines[start:] if not line.startswith(_DROPPED_PREFIXES)]


def regenerate(name: str) -> float:
    """Run one experiment in a fresh directory; write docs/results/<name>.json and .txt; return wall seconds."""
    toml_path = EXPERIMENTS / f"{name}.toml"
    if not toml_path.is_file():
        raise SystemExit(f"error: experiment: no file experiments/{name}.toml; choose from {', '.join(QUOTED)}")
    study_name = tomllib.loads(toml_path.read_text())["name"]
    command = [sys.executable, "-m", "sgdtune.study", f"experiments/{name}.toml", "--report", "--no-progress"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", COLUMNS="160")
    with tempfile.TemporaryDirectory(prefix=f"sgdtune-{name}-") as tmp:
        shutil.copytree(EXPERIMENTS, Path(tmp) / "experiments")
        started = time.monotonic()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        wall_s = time.monotonic() - started
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"error: {name}: the study exited with status {done.returncode}")
        report = json.loads((Path(tmp) / "reports" / study_name / "report.json").read_text())
    note = ""
    text = json.dumps(report, indent=1, sort_keys=True) + "\n"
    if len(text.encode()) > MAX_JSON_BYTES:
        for key in ("learning_curves", "history"):
            report.pop(key, None)
        text = json.dumps(report, indent=1, sort_keys=True) + "\n"
        note = "# report.json kept without its per-epoch learning curves and history (over 1 MB)\n"
    (HERE / f"{name}.json").write_text(text)
    header = (
        f"# python -m sgdtune.study experiments/{name}.toml --report --no-progress\n"
        f"# one run, in a fresh directory: {wall_s:.0f} s wall on this machine (timings vary with its load)\n"
    )
    (HERE / f"{name}.txt").write_text(header + note + "\n".join(closing_lines(done.stdout)) + "\n")
    return wall_s


def main(argv: list[str]) -> None:
    for name in argv or QUOTED:
        wall_s = regenerate(name)
        print(f"{name}: {wall_s:.0f} s -> docs/results/{name}.json, .txt", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
