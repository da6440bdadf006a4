"""B_crit against B_noise on two datasets, three seeds each: the README's McCandlish table.

    python docs/results/mccandlish.py                  # both datasets, seeds 0, 1, 2 (six studies)
    python docs/results/mccandlish.py --table          # print the table from docs/results/mccandlish.json

Each study runs as `python -m sgdtune.study experiments/<name>.toml --set seed=<N> --report --no-progress`
(two at a time) in a fresh temporary directory holding a copy of experiments/ (as docs/results/regenerate.py does). From
its report.json this keeps, per seed: the S(B) fit's B_crit with its 95% bootstrap interval, and the
report's "mccandlish" section's B_noise (the median over the fit's trials of B_noise along each trial's
path to the target) with its 95% bootstrap interval, the verdict and the lr prediction's ratios.

Pooled over the seeds: the fewest updates per batch size of every seed (3 points per B), one S(B) fit
to all of them (science.fits.steps_fit_limits: least squares in relative error, not a minimum over
seeds, which would favour the luckiest seed), and the median B_noise over the same trials; each with
a 95% percentile bootstrap over those trials, stratified by batch size (1,000 resamples, seed 0).

Written: docs/results/mccandlish.json (the figures, the commands, each run's wall seconds) and
docs/results/mccandlish.txt (the table as printed); tests/architecture/test_readme_figures.py checks the README's
table against the .json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPERIMENTS = ROOT / "experiments"
DATASETS = {"digits": "critical_batch", "MNIST-1D": "mnist1d_critical_batch"}
SEEDS = (0, 1, 2)
JSON = HERE / "mccandlish.json"
JOBS = 2  # studies run at once; each one's wall seconds are kept, measured under the others' load


def command(experiment: str, seed: int) -> list[str]:
    return ["python", "-m", "sgdtune.study", f"experiments/{experiment}.toml", "--set", f"seed={seed}", "--report",
            "--no-progress"]


def run_study(experiment: str, seed: int) -> tuple[dict, float]:
    """One study in a fresh directory: its report.json and the wall seconds it took."""
    study_name = tomllib.loads((EXPERIMENTS / f"{experiment}.toml").read_text())["name"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", COLUMNS="160")
    with tempfile.TemporaryDirectory(prefix=f"sgdtune-{experiment}-{seed}-") as tmp:
        shutil.copytree(EXPERIMENTS, Path(tmp) / "experiments")
        started = time.monotonic()
        done = subprocess.run([sys.executable, *command(experiment, seed)[1:]], cwd=tmp, env=env,
                              capture_output=True, text=True)
        wall_s = time.monotonic() - started
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"error: {experiment} seed {seed}: the study exited with status {done.returncode}")
        return json.loads((Path(tmp) / "reports" / study_name / "report.json").read_text()), wall_s


def interval(value: float, ci: dict | None) -> dict:
    return {"value": value, "ci_low": ci and ci["ci_low"], "ci_high": ci and ci["ci_high"]}


def per_seed(report: dict) -> dict:
    """The figures of one study: B_crit and B_noise with their intervals, the verdict, the lr ratios."""
    fit = report["steps_to_target"]["fit"]
    mc = report["mccandlish"]
    bn = mc["b_noise"]
    lr = mc.get("lr", {}).get("best", {})
    return {"b_crit": interval(fit["b_crit"], fit.get("b_crit_ci")), "s_min": fit["s_min"],
            "b_noise": interval(bn["value"], bn if "ci_low" in bn else None),
            "b_noise_at_target_median": bn["at_target_median"], "verdict": mc["agreement"]["verdict"],
            "ratio": mc["agreement"]["ratio"], "n_complete": report["study"]["trials_by_state"]["COMPLETE"],
            "trials": {"batch_size": mc["trials"]["batch_size"], "updates_to_target": mc["trials"]["updates_to_target"],
                       "b_noise_path_mean": mc["trials"]["b_noise_path_mean"],
                       "b_noise_at_target": mc["trials"]["b_noise_at_target"],
                       "path_points": mc["trials"]["path_points"]},
            "lr_within_grid": sum(bool(w) for w in lr.get("within_grid", [])),
            "lr_effective_over_predicted": lr.get("effective_over_predicted"),
            "lr_warmup_over_predicted": lr.get("warmup_over_predicted")}


def pooled(seeds: list[dict]) -> dict:
    """One S(B) fit and one B_noise median over every seed's trials, with stratified bootstrap intervals."""
    from sgdtune.report.mccandlish import agreement
    from sgdtune.science.fits import bootstrap_intervals, steps_fit_limits

    b = np.concatenate([s["trials"]["batch_size"] for s in seeds]).astype(float)
    steps = np.concatenate([s["trials"]["updates_to_target"] for s in seeds]).astype(float)
    noise = np.concatenate([s["trials"]["b_noise_path_mean"] for s in seeds]).astype(float)
    s_min, b_crit = steps_fit_limits(b, steps)

    def statistic(idx):
        fit = steps_fit_limits(b[idx], steps[idx])
        return None if fit is None else (fit[1], float(np.median(noise[idx])))

    ci = bootstrap_intervals(statistic, b.size, strata=b)
    high = None if not np.isfinite(ci[0].high) else ci[0].high  # None: unbounded (as report.json writes it)
    out = {"b_crit": {"value": b_crit, "ci_low": ci[0].low, "ci_high": high}, "s_min": s_min,
           "b_noise": {"value": float(np.median(noise)), "ci_low": ci[1].low, "ci_high": ci[1].high},
           "n_trials": int(b.size), "method": "one S(B) fit to every seed's fewest updates per B; median B_noise "
                                              "over the same trials; 95% percentile bootstrap over them, "
                                              "stratified by B (1,000 resamples, seed 0)"}
    out.update(agreement(out["b_noise"], out["b_crit"]))
    return out


def span(d: dict) -> str:
    high = "∞" if d["ci_high"] is None else f"{d['ci_high']:.0f}"
    return f"{d['value']:.0f} ({d['ci_low']:.0f} to {high})"


def table(figures: dict) -> list[str]:
    """The README's table: a row per dataset and seed, and the pooled row."""
    rows = ["| dataset | seed | B_crit (95% interval) | B_noise along the path (95% interval) | B_noise/B_crit | "
            "verdict |", "|---|---|---|---|---|---|"]
    for dataset, d in figures["datasets"].items():
        for seed, s in d["seeds"].items():
            rows.append(f"| {dataset} | {seed} | {span(s['b_crit'])} | {span(s['b_noise'])} | {s['ratio']:.2f} | "
                        f"{s['verdict']} |")
        p = d["pooled"]
        rows.append(f"| {dataset} | pooled | {span(p['b_crit'])} | {span(p['b_noise'])} | {p['ratio']:.2f} | "
                    f"{p['verdict']} |")
    return rows


def main(argv: list[str]) -> None:
    if argv == ["--table"]:
        print("\n".join(table(json.loads(JSON.read_text()))))
        return
    sys.path.insert(0, str(ROOT))
    figures: dict = {"commands": {}, "datasets": {}, "jobs": JOBS}
    runs = [(experiment, seed) for experiment in DATASETS.values() for seed in SEEDS]
    with ThreadPoolExecutor(JOBS) as pool:  # JOBS studies at once; each reports its own wall seconds
        done = dict(zip(runs, pool.map(lambda run: run_study(*run), runs)))
    for dataset, experiment in DATASETS.items():
        seeds = {}
        for seed in SEEDS:
            report, wall_s = done[experiment, seed]
            seeds[str(seed)] = {**per_seed(report), "wall_s": round(wall_s)}
            figures["commands"][f"{experiment} seed {seed}"] = " ".join(command(experiment, seed))
            print(f"{experiment} seed {seed}: {wall_s:.0f} s", flush=True)
        figures["datasets"][dataset] = {"experiment": experiment, "seeds": seeds,
                                        "pooled": pooled(list(seeds.values()))}
    JSON.write_text(json.dumps(figures, indent=1, sort_keys=True, allow_nan=False) + "\n")
    lines = table(figures)
    header = f"# python docs/results/mccandlish.py ({JOBS} studies at a time)\n"
    (HERE / "mccandlish.txt").write_text(header + "".join(
        f"# {c}: {s['wall_s']} s wall\n" for d in figures["datasets"].values() for c, s in
        zip((f"{d['experiment']} seed {k}" for k in d["seeds"]), d["seeds"].values())) + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
