"""The report's words: the plain-language summary, sentences computed from the sections' numbers, and
the number formats they share with the page. The drawing (html.py) imports them, never the reverse.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .inputs import column
from .mccandlish import mccandlish_sentences
from .sections import NOISE_SE


def fmt(value, spec: str) -> str:
    if value is None:
        return ""
    return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)


def octave_trend_sentence(fit: dict) -> str:
    """The change of val_acc per doubling of B over the complete trials, or why no trend is claimed."""
    if "gain_per_doubling" not in fit:
        return f"No trend of val_acc with batch size fitted: {fit['skipped']}."
    g, ci = fit["gain_per_doubling"], fit["ci"]
    sizes = fit["batch_size"]
    within = f"{ci['level']:.0%} interval {ci['ci_low']:+.4f} to {ci['ci_high']:+.4f}"
    over = (f"weighted least squares over {fit['n_trials']} complete trials in {fit['n_octaves']} octaves, "
            f"B = {sizes[0]}-{sizes[-1]}; sandwich SE, t interval")
    if fit["trend"]:
        trend = "rose" if g > 0 else "fell"
        return f"val_acc {trend} with batch size: {g:+.4f} per doubling of B ({within}; {over})."
    return (f"No trend of val_acc with batch size: {g:+.4f} per doubling of B, {within}, which includes 0 "
            f"({over}).")


def pm(value: float, se: float | None, spec: str = ".4f") -> str:
    """`value ± se`, or the value alone when there is no standard error."""
    return f"{value:{spec}}" if se is None else f"{value:{spec}} ± {se:{spec}}"


def interval(ci: dict | None, spec: str = ".3g") -> str:
    """'95% bootstrap interval a-b' (ci_high None: unbounded above), or '' without one."""
    if not ci:
        return ""
    high = "unbounded" if ci["ci_high"] is None else f"{ci['ci_high']:{spec}}"
    return f"{ci['level']:.0%} bootstrap interval {ci['ci_low']:{spec}} to {high}"


def noise_verdict(c: dict) -> str:
    """The difference with its combined SE and whether it is within noise (|diff| < 2 SE)."""
    if c["se"] is None:
        return f"difference {c['difference']:+.4f}, no standard error (validation set size unknown)"
    if c["within_noise"]:
        return f"difference {c['difference']:+.4f} ± {c['se']:.4f} (combined SE): within noise (|Δ| < 2 SE)"
    z = f" = {c['z']:.1f} SE" if c.get("z") is not None else ""
    return f"difference {c['difference']:+.4f} ± {c['se']:.4f} (combined SE): beyond noise (|Δ|{z} ≥ 2 SE)"


def failure_causes(reasons: list[str | None], shown: int = 2) -> str:
    """The most common fail reasons with their counts, for a study where no trial completed:
    "'training loss became nan at update 2 (epoch 1)' (2 trials)"; numbers in a reason
    (the update, the loss) are kept, so the same cause at other updates counts apart."""
    counts = Counter(r or "no reason recorded" for r in reasons).most_common()
    words = [f"{reason!r} ({n} trial{'s' * (n > 1)})" for reason, n in counts[:shown]]
    rest = sum(n for _, n in counts[shown:])
    return "; ".join(words) + (f"; {rest} other{'s' * (rest > 1)}" if rest else "")


def summary_sentences(report: dict, complete: list[dict]) -> list[str]:
    """Sentences computed from the report's numbers, section by section in the page's order;
    each says what it compares. Without a complete trial: the counts and why nothing is compared."""
    sentences = trial_count_sentences(report)
    if not complete:
        return sentences + nothing_completed_sentences(report)
    return (sentences
            + best_trial_sentences(report, complete)
            + equal_budget_sentences(report.get("equal_budget"))
            + per_octave_sentences(report.get("per_octave"))
            + per_doubling_sentences(report.get("per_doubling"))
            + steps_to_target_sentences(report.get("steps_to_target"))
            + loss_noise_sentences(report.get("loss_noise"))
            + grad_noise_sentences(report.get("grad_noise"))
            + (mccandlish_sentences(report["mccandlish"]) if report.get("mccandlish") else [])
            + sharpness_sentences(report.get("sharpness"))
            + gen_gap_sentences(complete)
            + importance_sentences(report))


def trial_count_sentences(report: dict) -> list[str]:
    """How many trials, by state."""
    by_state = report["study"]["trials_by_state"]
    return [f"{sum(by_state.values())} trials: "
            + ", ".join(f"{count} {state.lower()}" for state, count in sorted(by_state.items())) + "."]


def nothing_completed_sentences(report: dict) -> list[str]:
    """Why every section is skipped, with the most common fail reasons."""
    failed = [r.get("fail_reason") for r in report["trials"] if r["state"] == "FAIL"]
    why = f" Fail reasons: {failure_causes(failed)}." if failed else ""
    return [f"No trial completed: there is nothing to compare, and every section below is skipped.{why}"]


def best_trial_sentences(report: dict, complete: list[dict]) -> list[str]:
    """The best val_acc with its standard error, its trial, and the batch sizes it was chosen among."""
    best = max(complete, key=lambda r: (r["summary"]["final_val_acc"], -r["number"]))
    sizes = sorted({r["batch_size"] for r in complete})
    tried = f"batch sizes {sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"batch size {sizes[0]}"
    accuracy = report["accuracy"]
    se = dict(zip(accuracy["number"], accuracy["final_val_acc_se"]))
    se_source = accuracy["final_val_acc_se_source"][accuracy["number"].index(best["number"])]
    return [f"Best val_acc {pm(best['summary']['final_val_acc'], se[best['number']])}"
            f"{f' (SE: {se_source})' if se_source else ''} at batch size {best['batch_size']} (trial "
            f"{best['number']}, lr {fmt(best['lr'], '.3g')}, {best['budget']} = {best['budget_size']}), among "
            f"{len(complete)} complete trial{'s' * (len(complete) > 1)} with {tried}."]


def equal_budget_sentences(budget: dict | None) -> list[str]:
    """At equal budget: whether the largest batch size lost val_acc against the best, and whether
    the loss is beyond noise (report.json "equal_budget")."""
    if not budget:
        return []
    sizes_tried = ", ".join(map(str, budget["batch_size"]))
    head = f"At equal budget ({budget['budget']} = {budget['budget_size']}, batch sizes {sizes_tried})"
    tied = budget.get("tied_best_batch_sizes", [budget["best_batch_size"]])
    largest = budget["largest_batch_size"]
    if len(tied) > 1:
        return [f"{head}, batch sizes {', '.join(map(str, tied))} tie for the best val_acc, "
                f"{budget['best_val_acc_any']:.4f}" + (f"; the largest, B = {largest}, is among them."
                                                       if budget["loss"] == 0 else
                                                       f"; the largest, B = {largest}, reached "
                                                       f"{budget['largest_val_acc']:.4f}: "
                                                       f"{noise_verdict(budget['loss_vs_noise'])}.")]
    if budget["loss"] > 0:
        return [f"{head}, the largest batch size B = {largest} reached val_acc "
                f"{budget['largest_val_acc']:.4f}, {budget['loss']:.4f} below the best, "
                f"{budget['best_val_acc_any']:.4f} at B = {budget['best_batch_size']}; "
                f"{noise_verdict(budget['loss_vs_noise'])}."]
    return [f"{head}, the largest batch size B = {largest} gave the best val_acc, "
            f"{budget['largest_val_acc']:.4f}."]


def per_octave_sentences(octaves: dict | None) -> list[str]:
    """Trials per octave of B, the trend of val_acc over the octaves, and the best lr per octave
    (report.json "per_octave")."""
    if not octaves:
        return []
    out = ["Trials per octave of B, complete of all (pruned): " + ", ".join(
        f"{label}: {n_complete}/{n_trials}" + (f" ({n_pruned})" if n_pruned else "")
        for label, n_complete, n_trials, n_pruned in zip(octaves["label"], octaves["n_complete"],
                                                           octaves["n_trials"], octaves["n_pruned"])) + ".",
           octave_trend_sentence(octaves["fit"])]
    best_lrs = [(label, lr) for label, lr in zip(octaves["label"], octaves["best_lr"]) if lr is not None]
    if len(best_lrs) > 1:  # where lr is tuned per B, the best lr per octave shows how it scales with B
        out.append("lr of the best trial per octave of B: "
                   + ", ".join(f"{label}: {lr:.3g}" for label, lr in best_lrs) + ".")
    return out


def per_doubling_sentences(doubling: dict | None) -> list[str]:
    """The steps between neighbouring octaves beyond noise, and the smallest B against the largest
    (report.json "per_doubling")."""
    if not doubling:
        return []
    out = [neighbour_sentence(doubling)] if all(e is not None for e in doubling["gain_per_doubling_se"]) else []
    sizes, acc, se = doubling["batch_size"], doubling["best_val_acc"], doubling["best_val_acc_se"]
    out.append(f"Best val_acc at the smallest batch size B = {sizes[0]}, {pm(acc[0], se[0])}, against the largest, "
               f"B = {sizes[-1]}, {pm(acc[-1], se[-1])}: {noise_verdict(doubling['smallest_vs_largest'])}.")
    return out


def steps_to_target_sentences(steps: dict | None) -> list[str]:
    """The S(B) fit's S_min and B_crit with their intervals, and where doubling B stops paying
    (report.json "steps_to_target")."""
    if not steps or "fit" not in steps:
        return []
    fit = steps["fit"]
    ci_s, ci_b = interval(fit.get("s_min_ci")), interval(fit.get("b_crit_ci"))
    resampled = f", {fit['b_crit_ci']['resamples']} resamples of the trials" if ci_b else ""
    return [f"Updates to reach val_acc {steps['target_val_acc']}: fit S = S_min (1 + B_crit/B) gives S_min = "
            f"{fit['s_min']:.3g} updates{f' ({ci_s})' if ci_s else ''} and B_crit = {fit['b_crit']:.3g} examples"
            f"{f' ({ci_b}{resampled})' if ci_b else ''}; above B = "
            f"{fit['speedup_below_1p5_above']:.3g} each doubling of B saves less than a third of the updates."]


def loss_noise_sentences(loss_noise: dict | None) -> list[str]:
    """The loss noise's log-log slope against B beside theory's -0.5, or why no slope or trend is
    claimed; and the slope at the best trial's fixed weights (report.json "loss_noise")."""
    if not loss_noise:
        return []
    out = []
    if "fit_skipped" in loss_noise:
        out.append(f"Loss noise: no slope fitted ({loss_noise['fit_skipped']}).")
    if "slope" in loss_noise:
        lo, hi = loss_noise["fit_batch_sizes"]
        ci = loss_noise.get("slope_ci")
        if not loss_noise.get("trend", True):
            within = f", {interval(ci, '+.2f')}, which includes 0" if ci else ""
            out.append(f"Loss noise: no trend with batch size over {loss_noise['n_fitted']} trials with B = {lo}-{hi} "
                       f"(log-log slope {loss_noise['slope']:+.2f}{within}; no line drawn).")
        else:
            trend = "fell" if loss_noise["slope"] < 0 else "rose"
            ci_text = f"{interval(ci, '+.2f')}; " if ci else ""
            inside = "" if not ci else (", inside the interval" if loss_noise["theory_in_ci"]
                                        else ", outside the interval")
            excluded = loss_noise["excluded"]["number"]
            out.append(f"Loss noise {trend} with batch size with log-log slope {loss_noise['slope']:+.2f}"
                       f" ({ci_text}theory on a fixed model: {loss_noise['theory_slope']}"
                       f"{inside}) over {loss_noise['n_fitted']} trials with B = {lo}-{hi}, every B < n_train"
                       + (f"; trials without a measurement (fewer than two full batches per epoch) left out: "
                          f"{', '.join(map(str, excluded))}" if excluded else "") + ".")
    if loss_noise.get("fixed_model_slope") is not None:
        out.append(f"At the best trial's final weights, with no training between batches, loss noise fell with "
                   f"log-log slope {loss_noise['fixed_model_slope']:+.2f} over B = 8 to n/4 (theory: -0.5); the "
                   "slope across trials also carries their different learning rates and training lengths.")
    return out


def grad_noise_sentences(grad_noise: dict | None) -> list[str]:
    """The gradient noise scale and the critical batch size (report.json "grad_noise")."""
    return [noise_scale_sentence(grad_noise)] if grad_noise else []


def sharpness_sentences(sharpness: dict | None) -> list[str]:
    """The range of the final sharpness over B, full-batch trials against the edge of stability,
    and how near lr·λ_max came to its limit (report.json "sharpness")."""
    if not sharpness:
        return []
    final = np.array(sharpness["final_sharpness"], float)
    lo, hi = int(np.argmin(final)), int(np.argmax(final))
    text = (f"Sharpness (top Hessian eigenvalue of the training loss) at the end of training ranged from "
            f"{final[lo]:.3g} (B = {sharpness['batch_size'][lo]}) to {final[hi]:.3g} "
            f"(B = {sharpness['batch_size'][hi]})")
    full_batch = sharpness.get("full_batch")
    if full_batch:
        text += ("; full-batch trials at " + ", ".join(f"{r:.2f}" for r in full_batch["ratio_to_edge"])
                 + " times the edge of stability 2(1 + m)/lr (m: their momentum)")
    to_limit = [x for x in sharpness.get("lr_sharpness_to_limit", []) if x is not None]
    if to_limit:
        text += (f"; lr·λ_max reached {max(to_limit):.2f} of the full-batch stability limit 2(1 + m) "
                 f"(3.8 at m = 0.9)")
    notes = "".join(f" {sharpness[key]}." for key in ("adam", "weight_decay_note") if key in sharpness)
    return [text + "." + notes]


def gen_gap_sentences(complete: list[dict]) -> list[str]:
    """The generalization gap's range over the complete trials (its one value for a single trial)."""
    gaps = np.array(column(complete, "final_gen_gap"), float)
    if len(complete) == 1:
        return [f"Generalization gap (train_acc - val_acc): {gaps[0]:+.4f}."]
    lo, hi = complete[int(np.argmin(gaps))], complete[int(np.argmax(gaps))]
    return [f"Generalization gap (train_acc - val_acc) ranged from {gaps.min():+.4f} (B = {lo['batch_size']}, "
            f"trial {lo['number']}) to {gaps.max():+.4f} (B = {hi['batch_size']}, trial {hi['number']})."]


def importance_sentences(report: dict) -> list[str]:
    """Each parameter's share of the objective's variance (report.json "importance")."""
    importance = report.get("importance")
    if not importance:
        return []
    ranked = sorted(importance["importance"].items(), key=lambda kv: -kv[1])
    return [f"By {importance['method']}, the share of {report['study']['objectives'][0]} variance explained: "
            + ", ".join(f"{name} {share:.2f}" for name, share in ranked) + "."]


def noise_scale_sentence(grad_noise: dict) -> str:
    """The median final B_simple (a noise scale: never called a critical batch size), whether it
    exceeds n_train and what that means, and the critical batch size where the S(B) fit gives one."""
    b_simple = grad_noise["b_simple"]
    if grad_noise["median_is_lower_bound"]:
        median = (f"every trial's value is only a lower bound (|G|^2 not resolved): median bound "
                  f"{grad_noise['median_final']:.3g} examples")
    else:
        n_bounds, n_estimates = grad_noise["n_bounds"], grad_noise["n_estimates"]
        bounds = f"; {n_bounds} lower bound{'s' * (n_bounds > 1)} left out" if n_bounds else ""
        median = (f"median {grad_noise['median_final']:.3g} examples over {n_estimates} estimate"
                  f"{'s' * (n_estimates > 1)} (range {grad_noise['min_final']:.3g}-{grad_noise['max_final']:.3g}"
                  f"{bounds})")
    text = f"Gradient noise scale B_simple at the end of training: {median}"
    if b_simple.get("above_n_train"):
        text += f"; above n_train = {b_simple['n_train']:,}: {b_simple['meaning']}"
    critical = grad_noise["critical_batch_size"]
    above = ", ".join(map(str, grad_noise["batch_sizes_above"])) or "none"
    if critical["value"] is None:
        return (text + f". Critical batch size {critical['source']}; batch sizes tried above the median B_simple: "
                f"{above}.")
    ci = interval(critical if "ci_low" in critical else None)
    return (text + f". Critical batch size B_crit {critical['value']:.3g} ({critical['source']}"
            f"{f'; {ci}' if ci else ''}); batch sizes tried above it: {above}.")


def neighbour_sentence(per_doubling: dict) -> str:
    """The verdict on the steps of the best val_acc between neighbouring octaves of B: which, if
    any, exceed 2 standard errors (each step's SE: the two bests' SEs combined)."""
    b, gains = per_doubling["batch_size"], per_doubling["gain_per_doubling"]
    ses = per_doubling["gain_per_doubling_se"]
    steps = len(gains)
    beyond = [(b[k], b[k + 1], g, e) for k, (g, e) in enumerate(zip(gains, ses)) if abs(g) >= NOISE_SE * e]
    head = f"Best val_acc between neighbouring octaves of B ({steps} step{'s' * (steps > 1)})"
    if not beyond:
        return (f"{head}: no step beyond noise; every change is smaller than {NOISE_SE:g} standard errors "
                f"(SE {min(ses):.4f}-{max(ses):.4f} per doubling).")
    listed = "; ".join(f"B = {lo} -> {hi}: {g:+.4f} per doubling ({abs(g) / e:.1f} SE)" for lo, hi, g, e in beyond)
    rest = steps - len(beyond)
    return (f"{head}: {len(beyond)} step{'s' * (len(beyond) > 1)} beyond noise ({NOISE_SE:g} SE), "
            f"{listed}" + (f"; the other {rest} within noise." if rest else "."))
