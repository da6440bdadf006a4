"""The answer of a study: time to accuracy and the recommended batch size, on simulated sweeps
whose answer is known, and as the study command prints and records it."""

import json

import numpy as np
import optuna
import pytest
from conftest import run_cli
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sgdtune import report as report_mod
from sgdtune.report.recommend import lines, recommend, run_records

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
N_VAL = 1000
S_MIN, B_CRIT = 1000, 256  # updates to the goal: S(B) = S_MIN (1 + B_CRIT / B)
LR_RANGE = (0.001, 0.3)


def updates_at(b: int) -> int:
    return round(S_MIN * (1 + B_CRIT / b))


def flat_to_128(b: int) -> float:
    """Seconds per update: flat up to B = 128, then proportional to B."""
    return 1e-3 * max(1.0, b / 128)


def sweep(acc_of, per_size: int = 2, lr: float = 0.02, seconds_per_update=flat_to_128, profile: bool = True,
          lr_at: dict | None = None) -> optuna.Study:
    """A simulated study: `per_size` complete trials at each B of SIZES, val_acc acc_of(B) (within
    +-0.002 between the trials), S(B) updates, a device profile timing each B (or none: then each
    trial's compute_time_s is S(B) x seconds_per_update(B))."""
    study = optuna.create_study(study_name="sim", direction="maximize")
    study.set_user_attr("objectives", ["val_acc"])
    study.set_user_attr("n_val", N_VAL)
    if profile:
        study.set_user_attr("profile", {"device": "sim", "batch_size": SIZES,
                                        "seconds_per_update": [seconds_per_update(b) for b in SIZES],
                                        "flat_up_to": 128, "flat_rule": "within 10% of the B = 8 time"})
    dists = {"batch_size": IntDistribution(8, 1024, log=True), "lr": FloatDistribution(*LR_RANGE, log=True),
             "epochs": IntDistribution(1, 100)}
    for b in SIZES:
        for j in range(per_size):
            acc = acc_of(b) + (0.002 if j else -0.002) * (per_size > 1)
            u = updates_at(b)
            summary = {"final_val_acc": acc, "final_train_acc": acc, "final_gen_gap": 0.0, "updates": u,
                       "examples_seen": u * b, "compute_time_s": u * seconds_per_update(b)}
            trial_lr = (lr_at or {}).get(b, lr)
            study.add_trial(create_trial(params={"batch_size": b, "lr": trial_lr, "epochs": 10}, distributions=dists,
                                         value=acc, state=TrialState.COMPLETE, user_attrs={"summary": summary}))
    return study


def answer_of(study, goal=None) -> dict:
    return json.loads(report_mod.to_json(report_mod.build_report(study, goal=goal)))["recommendation"]


def test_flat_accuracy_within_noise_with_known_step_times_gives_the_fastest_batch_size():
    rec = answer_of(sweep(lambda b: 0.95))
    seconds = {b: updates_at(b) * flat_to_128(b) for b in SIZES}
    fastest = min(seconds, key=seconds.get)
    assert fastest == 128  # 3000 updates x 1 ms; 64: 5000 x 1 ms, 256: 2000 x 2 ms
    assert rec["batch_size"] == fastest and rec["evidence"] == "enough" and "next_command" not in rec
    assert rec["within_noise"] == [str(b) for b in SIZES]
    assert rec["seconds"] == pytest.approx(seconds[128]) and rec["time_source"] == "profile"
    assert rec["updates"] == updates_at(128) and rec["examples"] == updates_at(128) * 128
    assert rec["sentence"].startswith("Train with B = 128, lr 0.02, epochs = 10")
    text = " ".join(rec["reasons"])
    assert "from B = 8 to B = 128" in text and "the device is underused" in text
    assert f"the smallest, B = 8, {seconds[8]:.3g} s" in text
    assert f"the largest, B = 1024, {seconds[1024]:.3g} s" in text


def test_a_real_accuracy_loss_at_large_batch_keeps_the_recommendation_below_it():
    # a step costs the same at every B, so without the loss B = 1024 (fewest updates) would be fastest
    study = sweep(lambda b: 0.95 if b <= 128 else 0.90, seconds_per_update=lambda b: 1e-3)
    rec = answer_of(study)
    assert rec["within_noise"] == ["8", "16", "32", "64", "128"]  # 0.05 = 3.6 combined SE below: beyond noise
    assert rec["batch_size"] == 128
    assert "beyond it: B = 256, 512, 1024" in " ".join(rec["reasons"])
    assert answer_of(sweep(lambda b: 0.95, seconds_per_update=lambda b: 1e-3))["batch_size"] == 1024


def test_too_few_trials_gives_not_enough_evidence_and_a_next_command():
    rec = answer_of(sweep(lambda b: 0.95, per_size=1))
    assert rec["evidence"] == "thin" and rec["sentence"].startswith("Not enough evidence yet")
    assert [t["batch_size"] for t in rec["thin"]] == [str(b) for b in SIZES]
    # 8 finished trials; every B short of 1 complete trial: 8 sizes x 1 x 2 (about half get pruned)
    assert rec["next_command"] == "sgdtune study EXPERIMENT.toml --extend --n-trials 24"
    assert rec["next_command"] in rec["sentence"]


def test_a_best_lr_at_the_edge_of_its_range_is_thin_evidence_and_the_next_command_widens_it():
    rec = answer_of(sweep(lambda b: 0.95, lr_at={64: 0.29}))
    assert [t["kind"] for t in rec["thin"]] == ["lr_at_high_edge"] and rec["thin"][0]["batch_size"] == "64"
    assert "--set search.lr.high=1.2 --n-trials 32" in rec["next_command"]


@pytest.mark.parametrize("goal, expected", [
    ("fewest-examples", 8),  # examples = S_MIN (B + B_CRIT): fewest at the smallest B
    ("best-accuracy", 64),  # the one B whose accuracy stands out
    ("fastest", 128),
])
def test_each_goal_picks_its_known_batch_size(goal, expected):
    rec = answer_of(sweep(lambda b: 0.96 if b == 64 else 0.95), goal=goal)
    assert rec["goal"] == goal and rec["batch_size"] == expected


def test_without_a_profile_the_measured_time_per_update_decides_and_the_answer_says_so():
    rec = answer_of(sweep(lambda b: 0.95, profile=False))
    assert rec["batch_size"] == 128 and rec["time_source"] == "measured"
    assert any("no device profile" in r for r in rec["reasons"])


def test_time_to_accuracy_per_trial_and_per_batch_size_in_report_json():
    report = json.loads(report_mod.to_json(report_mod.build_report(sweep(lambda b: 0.95))))
    tta = report["time_to_accuracy"]
    assert tta["goal"]["kind"] == "within_noise" and tta["grouped_by"] == "batch size"
    trials = tta["trials"]
    assert trials["updates"] == [updates_at(b) for b in trials["batch_size"]]
    assert trials["examples"] == [updates_at(b) * b for b in trials["batch_size"]]
    assert trials["seconds"] == pytest.approx([updates_at(b) * flat_to_128(b) for b in trials["batch_size"]])
    assert tta["per_batch"]["label"] == [str(b) for b in SIZES] and tta["per_batch"]["n_reached"] == [2] * 8
    page = report_mod.render_html(report)
    assert 'id="answer"' in page and page.index('id="answer"') < page.index('id="summary"')
    assert "Time to accuracy: to reach within noise of the best val_acc" in page


def test_ties_within_five_percent_go_to_fewer_examples():
    batches = {"label": ["32", "64"], "n_complete": [2, 2], "best_val_acc": [0.95, 0.95],
               "best_val_acc_se": [0.007, 0.007], "best_number": [0, 1], "best_batch_size": [32, 64],
               "best_lr": [0.1, 0.1], "best_lr_base": [0.1, 0.1], "best_budget": [None, None], "number": [0, 1],
               "batch_size": [32, 64], "lr": [0.1, 0.1], "budget": [None, None], "updates": [100, 52],
               "examples": [3200, 3328], "seconds": [1.0, 1.03], "time_source": ["profile"] * 2}
    rec = recommend(batches, goal_text="within noise")
    assert rec["batch_size"] == 32 and "tie within 5%" in rec["decided_by"]
    tags, metrics = run_records(rec)
    assert tags["sgdtune.recommended_batch_size"] == "32" and metrics["recommended_batch_size"] == 32.0
    assert tags["mlflow.note.content"].startswith("**Recommendation (fastest):** Train with B = 32")
    assert lines(rec)[0] == f"recommendation: {rec['sentence']}"


def test_the_study_command_ends_with_the_recommendation_and_records_it_on_the_parent_run(workdir):
    out = run_cli("sgdtune.study", "experiments/quick.toml", "--no-progress", "--goal", "fewest-examples",
                  cwd=workdir)
    assert out.returncode == 0, out.stderr
    tail = out.stdout.strip().splitlines()
    first = next(i for i, line in enumerate(tail) if line.startswith("recommendation: "))
    assert all(line.startswith("  - ") for line in tail[first + 1:]) and len(tail) - first >= 4
    assert "the fewest examples to the goal accuracy" in tail[first]
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("quick").experiment_id],
                                "tags.`sgdtune.role` = 'study'")[0]
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tail[first] == f"recommendation: {tags['sgdtune.recommendation']}"
    assert tags["sgdtune.recommendation_goal"] == "fewest-examples"
    assert metrics["recommended_batch_size"] == float(tags["sgdtune.recommended_batch_size"])
    assert "recommended_lr" in metrics and tags["mlflow.note.content"].count("\n- ") >= 3
    # the report of the same study answers for the goal the study was run with
    assert run_cli("sgdtune.report", cwd=workdir).returncode == 0
    report = json.loads((workdir / "reports/quick/report.json").read_text())
    assert report["recommendation"]["goal"] == "fewest-examples"
    assert report["recommendation"]["sentence"] == tags["sgdtune.recommendation"]
    np.testing.assert_equal(report["recommendation"]["batch_size"], int(tags["sgdtune.recommended_batch_size"]))
