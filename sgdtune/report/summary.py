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
    """Sentences computed from the report's numbers; each says what it compares."""
    s = report["study"]["trials_by_state"]
    out = [f"{sum(s.values())} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.items())) + "."]
    if not complete:
        failed = [r.get("fail_reason") for r in report["trials"] if r["state"] == "FAIL"]
        why = f" Fail reasons: {failure_causes(failed)}." if failed else ""
        return out + [f"No trial completed: there is nothing to compare, and every section below is skipped.{why}"]
    best = max(complete, key=lambda r: (r["summary"]["final_val_acc"], -r["number"]))
    sizes = sorted({r["batch_size"] for r in complete})
    tried = f"batch sizes {sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"batch size {sizes[0]}"
    se = dict(zip(report["accuracy"]["number"], report["accuracy"]["final_val_acc_se"]))
    where = report["accuracy"]["final_val_acc_se_source"][report["accuracy"]["number"].index(best["number"])]
    out.append(f"Best val_acc {pm(best['summary']['final_val_acc'], se[best['number']])}"
               f"{f' (SE: {where})' if where else ''} at batch size {best['batch_size']} (trial "
               f"{best['number']}, lr {fmt(best['lr'], '.3g')}, {best['budget']} = {best['budget_size']}), among "
               f"{len(complete)} complete trial{'s' * (len(complete) > 1)} with {tried}.")
    eq = report.get("equal_budget")
    if eq:
        sizes_tried = ", ".join(map(str, eq["batch_size"]))
        head = f"At equal budget ({eq['budget']} = {eq['budget_size']}, batch sizes {sizes_tried})"
        tied = eq.get("tied_best_batch_sizes", [eq["best_batch_size"]])
        if len(tied) > 1:
            out.append(f"{head}, batch sizes {', '.join(map(str, tied))} tie for the best val_acc, "
                       f"{eq['best_val_acc_any']:.4f}" + (f"; the largest, B = {eq['largest_batch_size']}, is among "
                                                           "them." if eq["loss"] == 0 else
                                                           f"; the largest, B = {eq['largest_batch_size']}, reached "
                                                           f"{eq['largest_val_acc']:.4f}: "
                                                           f"{noise_verdict(eq['loss_vs_noise'])}."))
        elif eq["loss"] > 0:
            out.append(f"{head}, the largest batch size B = {eq['largest_batch_size']} reached val_acc "
                       f"{eq['largest_val_acc']:.4f}, {eq['loss']:.4f} below the best, {eq['best_val_acc_any']:.4f} "
                       f"at B = {eq['best_batch_size']}; {noise_verdict(eq['loss_vs_noise'])}.")
        else:
            out.append(f"{head}, the largest batch size B = {eq['largest_batch_size']} gave the best val_acc, "
                       f"{eq['largest_val_acc']:.4f}.")
    po = report.get("per_octave")
    if po:
        out.append("Trials per octave of B, complete of all (pruned): " + ", ".join(
            f"{lab}: {c}/{n}" + (f" ({p})" if p else "")
            for lab, c, n, p in zip(po["label"], po["n_complete"], po["n_trials"], po["n_pruned"])) + ".")
        out.append(octave_trend_sentence(po["fit"]))
        lrs = [(lab, lr) for lab, lr in zip(po["label"], po["best_lr"]) if lr is not None]
        if len(lrs) > 1:  # where lr is tuned per B, the best lr per octave shows how it scales with B
            out.append("lr of the best trial per octave of B: " + ", ".join(f"{lab}: {lr:.3g}" for lab, lr in lrs)
                       + ".")
    pd = report.get("per_doubling")
    if pd:
        b = pd["batch_size"]
        ses = pd["gain_per_doubling_se"]
        if all(e is not None for e in ses):
            out.append(neighbour_sentence(pd))
        acc, se_b = pd["best_val_acc"], pd["best_val_acc_se"]
        out.append(f"Best val_acc at the smallest batch size B = {b[0]}, {pm(acc[0], se_b[0])}, against the largest, "
                   f"B = {b[-1]}, {pm(acc[-1], se_b[-1])}: {noise_verdict(pd['smallest_vs_largest'])}.")
    st = report.get("steps_to_target")
    if st and "fit" in st:
        f = st["fit"]
        ci_s, ci_b = interval(f.get("s_min_ci")), interval(f.get("b_crit_ci"))
        resampled = f", {f['b_crit_ci']['resamples']} resamples of the trials" if ci_b else ""
        out.append(f"Updates to reach val_acc {st['target_val_acc']}: fit S = S_min (1 + B_crit/B) gives S_min = "
                   f"{f['s_min']:.3g} updates{f' ({ci_s})' if ci_s else ''} and B_crit = {f['b_crit']:.3g} examples"
                   f"{f' ({ci_b}{resampled})' if ci_b else ''}; above B = "
                   f"{f['speedup_below_1p5_above']:.3g} each doubling of B saves less than a third of the updates.")
    ln = report.get("loss_noise")
    if ln and "fit_skipped" in ln:
        out.append(f"Loss noise: no slope fitted ({ln['fit_skipped']}).")
    if ln and "slope" in ln and not ln.get("trend", True):
        lo, hi = ln["fit_batch_sizes"]
        ci = ln.get("slope_ci")
        within = f", {interval(ci, '+.2f')}, which includes 0" if ci else ""
        out.append(f"Loss noise: no trend with batch size over {ln['n_fitted']} trials with B = {lo}-{hi} (log-log "
                   f"slope {ln['slope']:+.2f}{within}; no line drawn).")
    if ln and "slope" in ln and ln.get("trend", True):
        trend = "fell" if ln["slope"] < 0 else "rose"
        ci = ln.get("slope_ci")
        ci_text = f"{interval(ci, '+.2f')}; " if ci else ""
        inside = "" if not ci else (", inside the interval" if ln["theory_in_ci"] else ", outside the interval")
        lo, hi = ln["fit_batch_sizes"]
        excluded = ln["excluded"]["number"]
        out.append(f"Loss noise {trend} with batch size with log-log slope {ln['slope']:+.2f}"
                   f" ({ci_text}theory on a fixed model: {ln['theory_slope']}"
                   f"{inside}) over {ln['n_fitted']} trials with B = {lo}-{hi}, every B < n_train"
                   + (f"; trials without a measurement (fewer than two full batches per epoch) left out: "
                      f"{', '.join(map(str, excluded))}" if excluded else "") + ".")
    if ln and ln.get("fixed_model_slope") is not None:
        out.append(f"At the best trial's final weights, with no training between batches, loss noise fell with "
                   f"log-log slope {ln['fixed_model_slope']:+.2f} over B = 8 to n/4 (theory: -0.5); the slope "
                   "across trials also carries their different learning rates and training lengths.")
    gn = report.get("grad_noise")
    if gn:
        out.append(noise_scale_sentence(gn))
    if report.get("mccandlish"):
        out.extend(mccandlish_sentences(report["mccandlish"]))
    sh = report.get("sharpness")
    if sh:
        k = np.array(sh["final_sharpness"], float)
        lo, hi = int(np.argmin(k)), int(np.argmax(k))
        text = (f"Sharpness (top Hessian eigenvalue of the training loss) at the end of training ranged from "
                f"{k[lo]:.3g} (B = {sh['batch_size'][lo]}) to {k[hi]:.3g} (B = {sh['batch_size'][hi]})")
        fb = sh.get("full_batch")
        if fb:
            text += ("; full-batch trials at " + ", ".join(f"{r:.2f}" for r in fb["ratio_to_edge"])
                     + " times the edge of stability 2(1 + m)/lr (m: their momentum)")
        ratio = [x for x in sh.get("lr_sharpness_to_limit", []) if x is not None]
        if ratio:
            text += (f"; lr·λ_max reached {max(ratio):.2f} of the full-batch stability limit 2(1 + m) "
                     f"(3.8 at m = 0.9)")
        out.append(text + "." + "".join(f" {sh[k]}." for k in ("adam", "weight_decay_note") if k in sh))
    gaps = np.array(column(complete, "final_gen_gap"), float)
    lo, hi = complete[int(np.argmin(gaps))], complete[int(np.argmax(gaps))]
    if len(complete) > 1:
        out.append(f"Generalization gap (train_acc - val_acc) ranged from {gaps.min():+.4f} (B = {lo['batch_size']}, "
                   f"trial {lo['number']}) to {gaps.max():+.4f} (B = {hi['batch_size']}, trial {hi['number']}).")
    else:
        out.append(f"Generalization gap (train_acc - val_acc): {gaps[0]:+.4f}.")
    imp = report.get("importance")
    if imp:
        ranked = sorted(imp["importance"].items(), key=lambda kv: -kv[1])
        out.append(f"By {imp['method']}, the share of {report['study']['objectives'][0]} variance explained: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in ranked) + ".")
    return out



def noise_scale_sentence(gn: dict) -> str:
    """The median final B_simple (a noise scale: never called a critical batch size), whether it
    exceeds n_train and what that means, and the critical batch size where the S(B) fit gives one."""
    bs = gn["b_simple"]
    if gn["median_is_lower_bound"]:
        median = (f"every trial's value is only a lower bound (|G|^2 not resolved): median bound "
                  f"{gn['median_final']:.3g} examples")
    else:
        bounds = f"; {gn['n_bounds']} lower bound{'s' * (gn['n_bounds'] > 1)} left out" if gn["n_bounds"] else ""
        median = (f"median {gn['median_final']:.3g} examples over {gn['n_estimates']} estimate"
                  f"{'s' * (gn['n_estimates'] > 1)} (range {gn['min_final']:.3g}-{gn['max_final']:.3g}{bounds})")
    text = f"Gradient noise scale B_simple at the end of training: {median}"
    if bs.get("above_n_train"):
        text += f"; above n_train = {bs['n_train']:,}: {bs['meaning']}"
    c = gn["critical_batch_size"]
    above = ", ".join(map(str, gn["batch_sizes_above"])) or "none"
    if c["value"] is None:
        return text + f". Critical batch size {c['source']}; batch sizes tried above the median B_simple: {above}."
    ci = interval(c if "ci_low" in c else None)
    return (text + f". Critical batch size B_crit {c['value']:.3g} ({c['source']}{f'; {ci}' if ci else ''}); "
            f"batch sizes tried above it: {above}.")


def neighbour_sentence(pd: dict) -> str:
    """The verdict on the steps of the best val_acc between neighbouring octaves of B: which, if
    any, exceed 2 standard errors (each step's SE: the two bests' SEs combined)."""
    b, gains, ses = pd["batch_size"], pd["gain_per_doubling"], pd["gain_per_doubling_se"]
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
