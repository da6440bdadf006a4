"""The figures the README and docs/ quote are those of the reports kept in docs/results/ (no training here).

docs/results/<experiment>.json is the report.json of `python -m sgdtune.study experiments/<experiment>.toml
--report`, written by `python docs/results/regenerate.py [experiment ...]`. Each claim below reads one figure
from such a file (a stable report.json key), formats it as the docs write it and requires that text in
its doc (docs/results.md unless it names another). When a rerun changes a figure, the test names the claim
and the text the doc should now hold.
"""

import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import ROOT

RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"  # the figures of the experiments, in words
SCIENCE = ROOT / "docs" / "science.md"


def _normalized(text: str) -> str:
    """Whitespace (line wraps) collapsed to one space, the typographic minus read as '-'."""
    return re.sub(r"\s+", " ", text.replace("\u2212", "-"))


def report(experiment: str) -> dict:
    return json.loads((RESULTS / f"{experiment}.json").read_text())


@dataclass(frozen=True)
class Claim:
    """`template.format(*values(report))` appears in `doc` (docs/results.md by default); `what` names the figure."""

    experiment: str
    what: str
    values: Callable[[dict], tuple]
    template: str
    doc: str = "docs/results.md"

    def text(self) -> str:
        return self.template.format(*self.values(report(self.experiment)))


def _states(r: dict) -> tuple:
    s = r["study"]["trials_by_state"]
    return s["COMPLETE"], s["PRUNED"], s["FAIL"]


def _octave_fit(r: dict) -> tuple:
    fit = r["per_octave"]["fit"]
    return fit["gain_per_doubling"], fit["ci"]["ci_low"], fit["ci"]["ci_high"]


def _best(r: dict) -> tuple:
    """The study's best val_acc, its SE and batch size (the best trial per batch size, first of ties)."""
    best = r["accuracy"]["best_per_batch"]
    i = max(range(len(best["batch_size"])), key=lambda k: best["final_val_acc"][k])
    return best["final_val_acc"][i], best["final_val_acc_se"][i], best["batch_size"][i]


def _at_batch(batch_size: int) -> Callable[[dict], tuple]:
    """The best val_acc and its SE at one batch size."""
    def get(r: dict) -> tuple:
        best = r["accuracy"]["best_per_batch"]
        i = best["batch_size"].index(batch_size)
        return best["final_val_acc"][i], best["final_val_acc_se"][i]
    return get


def _smallest_vs_largest(r: dict) -> tuple:
    d = r["per_doubling"]["smallest_vs_largest"]
    return d["difference"], d["se"], abs(d["z"])


def _loss_noise_slope(r: dict) -> tuple:
    ln = r["loss_noise"]
    return ln["slope"], ln["slope_ci"]["ci_low"], ln["slope_ci"]["ci_high"]


def _failed(r: dict) -> tuple:
    """Complete and failed (diverged) trials, with the lr range and the largest B of the failed ones."""
    failed = [t for t in r["trials"] if t["state"] == "FAIL"]
    return (r["study"]["trials_by_state"]["COMPLETE"], len(failed), min(t["lr"] for t in failed),
            max(t["lr"] for t in failed), max(t["batch_size"] for t in failed))


def _critical_fit(r: dict) -> tuple:
    fit = r["steps_to_target"]["fit"]
    return (fit["b_crit"], fit["b_crit_ci"]["ci_low"], fit["b_crit_ci"]["ci_high"],
            fit["s_min"], fit["s_min_ci"]["ci_low"], fit["s_min_ci"]["ci_high"])


def _noise_scale_at_target(r: dict) -> tuple:
    """Median and quartiles (inclusive method) of B_simple when each complete trial first reached its target,
    and the median over the ends of the B_crit interval."""
    values = [t["summary"]["grad_noise_scale_at_target"] for t in r["trials"]
              if t["state"] == "COMPLETE" and t["summary"].get("grad_noise_scale_at_target") is not None]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    ci = r["steps_to_target"]["fit"]["b_crit_ci"]
    return median, q1, q3, len(values), median / ci["ci_high"], median / ci["ci_low"]


def _sharpness(r: dict) -> tuple:
    sh = r["sharpness"]
    return min(sh["final_sharpness"]), max(sh["final_sharpness"]), max(sh["final_lr_sharpness"])


def _fixed_model_slope(r: dict) -> tuple:
    return (r["loss_noise"]["fixed_model_slope"],)


def _complete_failed(r: dict) -> tuple:
    s = r["study"]["trials_by_state"]
    return s["COMPLETE"], s["FAIL"]


def _examples_seen_at(batch_size: int) -> Callable[[dict], tuple]:
    """Examples seen and updates made by the best complete trial at one batch size."""
    def get(r: dict) -> tuple:
        best = r["accuracy"]["best_per_batch"]
        number = best["number"][best["batch_size"].index(batch_size)]
        trial = next(t for t in r["trials"] if t["number"] == number)
        return trial["summary"]["examples_seen"], trial["summary"]["updates"]
    return get


def _ends(r: dict) -> tuple:
    """The best val_acc and its SE at the smallest and at the largest batch size."""
    best = r["accuracy"]["best_per_batch"]
    lo, hi = best["batch_size"].index(min(best["batch_size"])), best["batch_size"].index(max(best["batch_size"]))
    return (best["final_val_acc"][lo], best["final_val_acc_se"][lo], best["batch_size"][lo],
            best["final_val_acc"][hi], best["final_val_acc_se"][hi], best["batch_size"][hi])


def _steps_within_noise(r: dict) -> tuple:
    """Steps between neighbouring batch sizes whose change of best val_acc is under 2 SE, of all steps."""
    pd = r["per_doubling"]
    within = sum(abs(g) < 2 * se for g, se in zip(pd["gain_per_doubling"], pd["gain_per_doubling_se"], strict=True))
    return within, len(pd["gain_per_doubling"])


def _test_acc(r: dict, number: int) -> float:
    return next(t for t in r["trials"] if t["number"] == number)["summary"]["final_test_acc"]


def _best_with_test(r: dict) -> tuple:
    acc, se, batch_size = _best(r)
    best = r["accuracy"]["best_per_batch"]
    return acc, se, batch_size, _test_acc(r, best["number"][best["batch_size"].index(batch_size)])


def _octave_ends_with_test(r: dict) -> tuple:
    """The best trial of the smallest and of the largest octave with a complete trial: val_acc, SE, B, test_acc;
    then their difference and its combined SE."""
    po = r["per_octave"]
    kept = [i for i, n in enumerate(po["best_number"]) if n is not None]
    ends = [(po["best_val_acc"][i], po["best_val_acc_se"][i], po["best_batch_size"][i],
             _test_acc(r, po["best_number"][i]))
            for i in (kept[0], kept[-1])]
    d = r["per_doubling"]["smallest_vs_largest"]
    return (*ends[0], *ends[1], d["difference"], d["se"])


def _largest_gap(r: dict) -> tuple:
    return (max(r["accuracy"]["final_gen_gap"]),)


def _completed_from(batch_size: int) -> Callable[[dict], tuple]:
    """Trials at B >= batch_size, and how many of them completed."""
    def get(r: dict) -> tuple:
        at = [t for t in r["trials"] if t["batch_size"] >= batch_size]
        return len(at), batch_size, sum(t["state"] == "COMPLETE" for t in at)
    return get


PAPER_TEST_ACC_PCT = {"mnist1d_mlp": 68.0, "mnist1d_cnn": 94.0}  # Greydanus & Kobak (2024), their table


def _test_acc_over_seeds(r: dict) -> tuple:
    """The one trial's test accuracy in %, mean and standard deviation over its replicates (seeds)."""
    summary = r["trials"][0]["summary"]
    return 100 * summary["final_test_acc"], 100 * summary["final_test_acc_std"]


def _points_below_paper(experiment: str) -> Callable[[dict], tuple]:
    def get(r: dict) -> tuple:
        mean, std = _test_acc_over_seeds(r)
        return PAPER_TEST_ACC_PCT[experiment] - mean, std
    return get


def _recommendation(r: dict) -> tuple:
    rec = r["recommendation"]
    return rec["batch_size"], rec["lr"], rec["budget"], rec["number"]


def _lr_range(r: dict) -> tuple:
    po = r["per_octave"]
    lo = min(range(len(po["best_lr"])), key=lambda k: po["best_lr"][k])
    hi = max(range(len(po["best_lr"])), key=lambda k: po["best_lr"][k])
    return po["best_lr"][lo], po["best_batch_size"][lo], po["best_lr"][hi], po["best_batch_size"][hi]


def _ped_anova(r: dict) -> tuple:
    ranked = sorted(r["importance"]["ped_anova"].items(), key=lambda kv: -kv[1])
    return tuple(x for kv in ranked for x in kv)


def _reasons(*openings: str) -> Callable[[dict], tuple]:
    """The recommendation's reasons that open with these words (those free of measured seconds)."""
    def get(r: dict) -> tuple:
        reasons = r["recommendation"]["reasons"]
        return tuple(next(x for x in reasons if x.startswith(o)) for o in openings)
    return get


def _train_acc_at(batch_size: int) -> Callable[[dict], tuple]:
    """The final train_acc of the best complete trial at one batch size."""
    def get(r: dict) -> tuple:
        best = r["accuracy"]["best_per_batch"]
        number = best["number"][best["batch_size"].index(batch_size)]
        return (next(t for t in r["trials"] if t["number"] == number)["summary"]["final_train_acc"],)
    return get


CLAIMS = [
    # The default study (docs/usage.md, "Reports and the UIs"; its recommendation in the README, "The answer").
    Claim("batch_tradeoff", "trials by state", _states, "{} complete, {} pruned, {} failed", doc="docs/usage.md"),
    Claim("batch_tradeoff", "per-octave slope and its 95% interval", _octave_fit,
          "{:+.4f} per doubling of B (95% interval {:+.4f} to {:+.4f}): no trend", doc="docs/usage.md"),
    Claim("batch_tradeoff", "the best val_acc", _best, "the best, {:.4f} ± {:.4f} at B = {}", doc="docs/usage.md"),
    Claim("batch_tradeoff", "fANOVA importances", lambda r: (r["importance"]["importance"]["lr"],
                                                             r["importance"]["importance"]["batch_size"]),
          "fANOVA ranks lr first ({:.2f}, batch_size {:.2f})", doc="docs/usage.md"),
    Claim("batch_tradeoff", "the best lr per octave, lowest and highest", _lr_range,
          "ranged from {:.2g} (B = {}) to {:.2g} (B = {})", doc="docs/usage.md"),
    Claim("batch_tradeoff", "PED-ANOVA importances", _ped_anova,
          "PED-ANOVA ranks {} first ({:.2f}, {} {:.2f}, {} {:.2f})", doc="docs/usage.md"),
    Claim("batch_tradeoff", "the recommended B, lr, budget and trial", _recommendation,
          "Train with B = {}, lr {:.3g}, {} (trial {})", doc="README.md"),
    Claim("batch_tradeoff", "the recommendation's accuracy reasons", _reasons("Accuracy", "Within noise"), "- {} - {}",
          doc="README.md"),
    Claim("batch_tradeoff", "the recommendation's evidence", _reasons("Evidence"), "- {}", doc="README.md"),
    # The science table and the paragraphs under it.
    Claim("critical_batch", "complete and diverged trials", _failed,
          "({} complete, {} diverged at lr {}-{} and B ≤ {})"),
    Claim("critical_batch", "the S(B) fit", _critical_fit,
          "fit B_crit = {:.0f} examples (95% interval {:.0f} to {:.0f}), S_min = {:.1f} updates ({:.1f} to {:.1f})"),
    Claim("critical_batch", "B_simple at the target", _noise_scale_at_target,
          "median {:.0f} examples (interquartile {:.0f}-{:.0f}, {} trials), {:.0f} to {:.0f} times B_crit"),
    Claim("critical_batch", "sharpness and lr × sharpness", _sharpness,
          "{:.2f} to {:.2f} with lr × sharpness at most {:.2f} (critical batch)"),
    Claim("critical_batch", "loss-noise slope across trials", _loss_noise_slope,
          "{:.2f} (critical batch; 95% interval {:.2f} to {:.2f})"),
    Claim("fixed_updates", "complete and failed trials", _complete_failed, "lr searched ({} complete, {} failed)"),
    Claim("fixed_updates", "best val_acc at B = 8", _at_batch(8), "best val_acc {:.4f} ± {:.4f} at B = 8"),
    Claim("fixed_updates", "best val_acc at B = 1024", _at_batch(1024), "{:.4f} ± {:.4f} at B = 1024"),
    Claim("fixed_updates", "smallest against largest B", _smallest_vs_largest,
          "(difference {:.4f} ± {:.4f}, {:.1f} SE: beyond noise)"),
    Claim("fixed_updates", "the best val_acc", _best, "best overall {:.4f} ± {:.4f} at B = {}"),
    Claim("fixed_updates", "batch sizes within noise of the best", _reasons("Within noise"), "{}"),
    Claim("fixed_updates", "examples seen at B = 8", _examples_seen_at(8),
          "having seen {:,.0f} examples in its {:.0f} updates"),
    Claim("fixed_updates", "sharpness and lr × sharpness", _sharpness,
          "{:.2f} to {:.2f} with lr × sharpness at most {:.2f} (equal updates)"),
    Claim("fixed_updates", "loss-noise slope across trials", _loss_noise_slope,
          "{:.2f} (equal updates; {:.2f} to {:.2f})"),
    Claim("fixed_updates", "loss-noise slope at fixed weights", _fixed_model_slope, "{:.2f} (equal updates)"),
    Claim("linear_scaling", "best val_acc at the smallest and largest B", _ends,
          "best val_acc {:.4f} ± {:.4f} at B = {} and {:.4f} ± {:.4f} at B = {}"),
    Claim("linear_scaling", "the best val_acc", _best, "best {:.4f} ± {:.4f} at B = {}"),
    Claim("linear_scaling", "steps within noise", _steps_within_noise,
          "{} of {} steps between neighbouring batch sizes within 2 SE"),
    Claim("linear_scaling", "sharpness and lr × sharpness", _sharpness,
          "{:.2f} to {:.2f} with lr × sharpness at most {:.2f} (linear scaling)"),
    Claim("linear_scaling", "loss-noise slope across trials", _loss_noise_slope,
          "{:.2f} (linear scaling; {:.2f} to {:.2f})"),
    Claim("linear_scaling", "loss-noise slope at fixed weights", _fixed_model_slope, "{:.2f} (linear scaling)"),
    # MNIST-1D.
    Claim("mnist1d_tradeoff", "complete and pruned trials", lambda r: (r["study"]["trials_by_state"]["COMPLETE"],
                                                                       r["study"]["trials_by_state"]["PRUNED"]),
          "It kept {} complete trials ({} pruned)"),
    Claim("mnist1d_tradeoff", "the best val_acc and its test_acc", _best_with_test,
          "The best val_acc, {:.4f} ± {:.4f} at B = {} (test {:.3f})"),
    Claim("mnist1d_tradeoff", "batch sizes within noise of the best", _reasons("Within noise"), '"{}"'),
    Claim("mnist1d_tradeoff", "per-octave slope and its 95% interval", _octave_fit,
          "{:.4f} per doubling (95% interval {:.4f} to {:+.4f})"),
    Claim("mnist1d_tradeoff", "smallest against largest octave", _octave_ends_with_test,
          "{:.4f} ± {:.4f} at B = {} (test {:.3f}), and of the largest, {:.4f} ± {:.4f} at B = {} (test {:.3f}), "
          "are within noise of each other (difference {:.4f} ± {:.4f})"),
    Claim("mnist1d_tradeoff", "the largest generalization gap", _largest_gap, "opened gaps of up to {:.2f}"),
    Claim("mnist1d_tradeoff", "complete trials at large B", _completed_from(128),
          "of the {} trials at B ≥ {}, {} completed"),
    Claim("mnist1d_mlp", "test accuracy over 3 seeds", _test_acc_over_seeds, "| {:.1f} ± {:.1f}% |"),
    Claim("mnist1d_mlp", "against the paper", _points_below_paper("mnist1d_mlp"),
          "the MLP's mean is {:.1f} points below the paper's, with a standard deviation of {:.1f} points over seeds"),
    Claim("mnist1d_cnn", "test accuracy over 3 seeds", _test_acc_over_seeds, "| {:.1f} ± {:.1f}% |"),
    Claim("mnist1d_cnn", "against the paper", _points_below_paper("mnist1d_cnn"),
          "The CNN's mean is {:.1f} points below the paper's, with a standard deviation of {:.1f} points over seeds"),
    # MNIST-1D at equal updates and with linear lr scaling (docs/results.md, "Beyond digits: MNIST-1D").
    Claim("mnist1d_fixed_updates", "complete and failed trials", _complete_failed,
          "five lr per B on a grid ({} complete, {} failed)"),
    Claim("mnist1d_fixed_updates", "best val_acc at the smallest and largest B", _ends,
          "best val_acc {:.4f} ± {:.4f} at B = {} and {:.4f} ± {:.4f} at B = {}"),
    Claim("mnist1d_fixed_updates", "smallest against largest B, then the batch sizes within noise of the best",
          lambda r: _smallest_vs_largest(r) + _reasons("Within noise")(r),
          "(difference {:.4f} ± {:.4f}, {:.1f} SE: beyond noise). {}"),
    Claim("mnist1d_fixed_updates", "examples seen at B = 8", _examples_seen_at(8),
          "B = 8 saw {:,.0f} examples in its {:,.0f} updates"),
    Claim("mnist1d_fixed_updates", "train_acc at B = 8", _train_acc_at(8), "(train_acc {:.2f})"),
    Claim("mnist1d_fixed_updates", "the best trials at B >= 128: lowest train_acc, val_acc range",
          lambda r: (min(_train_acc_at(b)(r)[0] for b in (128, 512, 1024)),
                     min(_at_batch(b)(r)[0] for b in (128, 512, 1024)),
                     max(_at_batch(b)(r)[0] for b in (128, 512, 1024))),
          "B ≥ 128 end at train_acc {:.2f} and val_acc {:.2f}-{:.2f}"),
    Claim("mnist1d_fixed_updates", "per-octave slope and its 95% interval", _octave_fit,
          "{:+.4f} per doubling of B (95% interval {:+.4f} to {:+.4f})"),
    Claim("mnist1d_linear_scaling", "complete and failed trials", _complete_failed,
          "lr_base 0.01, 0.03 or 0.1 ({} complete, {} failed)"),
    Claim("mnist1d_linear_scaling", "best val_acc at the smallest and largest B", _ends,
          "best val_acc {:.4f} ± {:.4f} at B = {} and {:.4f} ± {:.4f} at B = {}"),
    Claim("mnist1d_linear_scaling", "the best val_acc", _best, "best {:.4f} ± {:.4f} at B = {}"),
    Claim("mnist1d_linear_scaling", "steps within noise, the per-octave slope, the batch sizes within noise",
          lambda r: _steps_within_noise(r) + _octave_fit(r) + _reasons("Within noise")(r),
          "{} of {} steps between neighbouring batch sizes within 2 SE, and {:+.4f} per doubling of B "
          "(95% interval {:+.4f} to {:+.4f}): no trend. {}"),
    Claim("mnist1d_linear_scaling", "train_acc at B = 1024", _train_acc_at(1024), "(train_acc {:.2f})"),
    Claim("mnist1d_linear_scaling", "examples seen at B = 1024", _examples_seen_at(1024),
          "B = 1024 at 40 epochs, {:,.0f} examples in {:,.0f} updates"),
    Claim("mnist1d_fixed_updates", "train_acc at B = 8 and the per-octave slope",
          lambda r: _train_acc_at(8)(r) + _octave_fit(r),
          "(train_acc {:.2f}), so across all trials val_acc rises with B: {:+.4f} per doubling of B "
          "(95% interval {:+.4f} to {:+.4f})", doc="docs/science.md"),
    Claim("mnist1d_linear_scaling", "the per-octave slope, updates and train_acc at B = 1024",
          lambda r: _octave_fit(r) + _examples_seen_at(1024)(r)[1:] + _train_acc_at(1024)(r),
          "the slope is {:+.4f} per doubling (95% interval {:+.4f} to {:+.4f}); B = 1024 falls short after its "
          "{:.0f} updates (train_acc {:.2f})", doc="docs/science.md"),
    Claim("critical_batch", "median B_simple at the target, in the probe's cost", _noise_scale_at_target,
          "its median `B_simple` at the target, {:.0f} examples", doc="docs/science.md"),
    Claim("critical_batch", "loss-noise slope at fixed weights", _fixed_model_slope,
          "the slope is {:.2f} (critical batch)"),
]


def _gap(*variants: str, interval: bool = False) -> Callable[[dict], tuple]:
    """Final test accuracy (%) of each variant of docs/results/mnist1d_mlp_gap.py: mean and SD over seeds,
    and with `interval` the last one's 95% interval of the mean."""
    def get(r: dict) -> tuple:
        figures = [r["variants"][v]["final_test_pct"] for v in variants]
        out = tuple(x for f in figures for x in (f["mean"], f["std"]))
        return out + ((figures[-1]["ci_low"], figures[-1]["ci_high"]) if interval else ())
    return get


# Not a report: the MNIST-1D paper's MLP setting trained outside sgdtune (docs/results/mnist1d_mlp_gap.py).
GAP_CLAIMS = [
    Claim("mnist1d_mlp_gap", "seeds", lambda r: (len(r["seeds"]),),
          "(`python docs/results/mnist1d_mlp_gap.py`, {} seeds"),
    Claim("mnist1d_mlp_gap", "the paper's setting", _gap("paper", interval=True),
          "That setting reaches {:.1f} ± {:.1f}% test accuracy (95% interval of the mean {:.1f} to {:.1f})"),
    Claim("mnist1d_mlp_gap", "sgdtune's differences one at a time, then together",
          _gap("plain", "L2 1e-3", "sgdtune's data", "sgdtune's setting", interval=True),
          "no residual connection {:.1f} ± {:.1f}%, L2 1e-3 {:.1f} ± {:.1f}%, sgdtune's data (3,800 sequences, "
          "standardized, reshuffled every epoch) {:.1f} ± {:.1f}%, all of them together {:.1f} ± {:.1f}% "
          "({:.1f} to {:.1f})"),
    Claim("mnist1d_mlp_gap", "the paper's setting", _gap("paper", interval=True),
          "5 seeds it gives {:.1f} ± {:.1f}% (mean ± SD; 95% t-interval of the mean {:.1f} to {:.1f})",
          doc="docs/science.md"),
    Claim("mnist1d_mlp_gap", "sgdtune's differences with their intervals",
          lambda r: tuple(x for v in ("plain", "L2 1e-3", "sgdtune's data", "sgdtune's setting")
                          for x in _gap(v, interval=True)(r)),
          "plain MLP {:.1f} ± {:.1f}% ({:.1f} to {:.1f}), Adam's L2 1e-3 {:.1f} ± {:.1f}% ({:.1f} to {:.1f}), "
          "3,800 standardized sequences reshuffled every epoch {:.1f} ± {:.1f}% ({:.1f} to {:.1f}), "
          "all together {:.1f} ± {:.1f}% ({:.1f} to {:.1f})", doc="docs/science.md"),
    Claim("mnist1d_mlp_gap", "the best test accuracy along the way, lowest and highest variant mean",
          lambda r: (min(v["best_test_pct"]["mean"] for v in r["variants"].values()),
                     max(v["best_test_pct"]["mean"] for v in r["variants"].values())),
          "averages {:.1f}-{:.1f}% per variant", doc="docs/science.md"),
]


@pytest.mark.parametrize("claim", GAP_CLAIMS, ids=lambda c: f"{c.experiment}: {c.what}")
def test_the_docs_quote_the_mnist1d_mlp_gap_as_its_script_gave_it(claim):
    expected = _normalized(claim.text())
    assert expected in _normalized((ROOT / claim.doc).read_text()), f"{claim.doc}: expected the text {expected!r}"


def test_no_variant_of_the_mnist1d_mlp_reaches_the_papers_68_percent_within_its_interval():
    """The docs say 68% is out of reach of the paper's own setting and of every variant, and that each variant's
    95% interval holds the paper setting's mean."""
    r = report("mnist1d_mlp_gap")
    assert r["paper_pct"] == PAPER_TEST_ACC_PCT["mnist1d_mlp"]
    paper_mean = r["variants"]["paper"]["final_test_pct"]["mean"]
    for name, variant in r["variants"].items():
        final = variant["final_test_pct"]
        assert final["ci_high"] < r["paper_pct"], name
        assert final["ci_low"] <= paper_mean <= final["ci_high"], name


@pytest.mark.parametrize("experiment", sorted({c.experiment for c in CLAIMS}))
def test_every_quoted_experiment_has_its_report_beside_the_readme(experiment):
    r = report(experiment)
    assert str(r.get("schema", "")).startswith("sgdtune.report/"), f"docs/results/{experiment}.json is no report"
    assert (RESULTS / f"{experiment}.txt").is_file()


def test_every_results_file_the_readme_and_science_notes_name_exists():
    text = README.read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    named = set(re.findall(r"docs/results/([\w.-]+\.(?:json|txt))", text))
    assert named, "the docs name no docs/results file"
    assert sorted(n for n in named if not (RESULTS / n).is_file()) == []


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: f"{c.experiment}: {c.what}")
def test_the_readme_quotes_each_figure_as_its_report_gives_it(claim):
    expected = _normalized(claim.text())
    if expected not in _normalized((ROOT / claim.doc).read_text()):
        pytest.fail(f"{claim.doc} no longer matches docs/results/{claim.experiment}.json ({claim.what}): "
                    f"expected the text {expected!r}")


def test_the_readme_shows_the_default_studys_recommendation_as_its_console_printed_it():
    """The example under "The answer" is docs/results/batch_tradeoff.txt's closing lines, seconds included."""
    lines = (RESULTS / "batch_tradeoff.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("recommendation:"))
    assert "\n".join(lines[start:]) in README.read_text()


def _mccandlish_script():
    """docs/results/mccandlish.py as a module (it writes the table docs/results.md shows)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mccandlish_results", RESULTS / "mccandlish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mccandlish_table_in_the_results_doc_is_that_of_docs_results_mccandlish_json():
    """Each row (per dataset, seed and pooled: B_crit and B_noise with their 95% intervals, the ratio and the
    verdict) as docs/results/mccandlish.py formats it from docs/results/mccandlish.json."""
    figures = json.loads((RESULTS / "mccandlish.json").read_text())
    assert set(figures["datasets"]) == {"digits", "MNIST-1D"}
    assert all(set(d["seeds"]) == {"0", "1", "2"} for d in figures["datasets"].values())
    readme = _normalized(RESULTS_DOC.read_text())
    missing = [row for row in _mccandlish_script().table(figures) if _normalized(row) not in readme]
    assert missing == [], f"docs/results.md no longer matches docs/results/mccandlish.json: expected the rows {missing}"


def test_the_results_doc_states_the_lr_prediction_as_docs_results_mccandlish_json_gives_it():
    """How often eps_opt(B) falls within one lr-grid step of the best effective lr, and the ranges of
    best/predicted (digits: B <= 128 and B >= 256 apart), without and with momentum's warm-up."""
    figures = json.loads((RESULTS / "mccandlish.json").read_text())
    readme = _normalized(RESULTS_DOC.read_text())

    def spread(dataset: str, key: str, keep=lambda b: True) -> tuple[float, float]:
        seeds = figures["datasets"][dataset]["seeds"].values()
        values = [x for s in seeds for b, x in zip(s["trials"]["batch_size"], s[key]) if keep(b)]
        return min(values), max(values)

    def within(dataset: str) -> tuple[int, int]:
        counts = [s["lr_within_grid"] for s in figures["datasets"][dataset]["seeds"].values()]
        return min(counts), max(counts)

    texts = [
        "at {} to {} of the 8 batch sizes on digits".format(*within("digits")),
        "(best/predicted {:.2f}-{:.2f} at B ≤ 128, {:.1f}-{:.1f} at B ≥ 256;".format(
            *spread("digits", "lr_effective_over_predicted", lambda b: b <= 128),
            *spread("digits", "lr_effective_over_predicted", lambda b: b >= 256)),
        "with momentum's warm-up counted, {:.2f}-{:.1f})".format(*spread("digits", "lr_warmup_over_predicted")),
        "and at {} to {} on MNIST-1D".format(*within("MNIST-1D")),
        "({:.1f}-{:.1f} times the prediction; {:.1f}-{:.1f} with the warm-up counted)".format(
            *spread("MNIST-1D", "lr_effective_over_predicted"), *spread("MNIST-1D", "lr_warmup_over_predicted")),
    ]
    assert [t for t in texts if _normalized(t) not in readme] == []


def test_the_science_notes_quote_digits_seed_0_of_docs_results_mccandlish_json():
    """docs/science.md, section 5: the path means against the values at the target, seed 0 of digits."""
    s = json.loads((RESULTS / "mccandlish.json").read_text())["datasets"]["digits"]["seeds"]["0"]
    t = s["trials"]
    path = [i for i, n in enumerate(t["path_points"]) if n > 1]
    texts = [f"`B_crit = {s['b_crit']['value']:.0f}` (95% interval {s['b_crit']['ci_low']:.0f} to "
             f"{s['b_crit']['ci_high']:.0f})",
             f"median {s['b_noise']['value']:.0f} (95% interval {s['b_noise']['ci_low']:.0f} to "
             f"{s['b_noise']['ci_high']:.0f}); at the target, {s['b_noise_at_target_median']:.0f}",
             "it is " + ", ".join(f"{t['b_noise_path_mean'][i]:.0f}" for i in path) + " against "
             + ", ".join(f"{t['b_noise_at_target'][i]:.0f}" for i in path) + " at the target"]
    science = _normalized(SCIENCE.read_text())
    assert [x for x in texts if _normalized(x) not in science] == []
