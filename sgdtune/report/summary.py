"""The report's plain-language summary: sentences computed from the sections' numbers."""

from __future__ import annotations

import numpy as np

from .html import fmt
from .inputs import column


def summary_sentences(report: dict, complete: list[dict]) -> list[str]:
    """Sentences computed from the report's numbers; each says what it compares."""
    s = report["study"]["trials_by_state"]
    out = [f"{sum(s.values())} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(s.items())) + "."]
    if not complete:
        return out
    best = max(complete, key=lambda r: (r["summary"]["final_val_acc"], -r["number"]))
    sizes = sorted({r["batch_size"] for r in complete})
    tried = f"batch sizes {sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"batch size {sizes[0]}"
    out.append(f"Best val_acc {best['summary']['final_val_acc']:.4f} at batch size {best['batch_size']} (trial "
               f"{best['number']}, lr {fmt(best['lr'], '.3g')}, {best['budget']} = {best['budget_size']}), among "
               f"{len(complete)} complete trial{'s' * (len(complete) > 1)} with {tried}.")
    eq = report.get("equal_budget")
    if eq:
        sizes_tried = ", ".join(map(str, eq["batch_size"]))
        head = f"At equal budget ({eq['budget']} = {eq['budget_size']}, batch sizes {sizes_tried})"
        if eq["loss"] > 0:
            out.append(f"{head}, the largest batch size B = {eq['largest_batch_size']} reached val_acc "
                       f"{eq['largest_val_acc']:.4f}, {eq['loss']:.4f} below the best, {eq['best_val_acc_any']:.4f} "
                       f"at B = {eq['best_batch_size']}.")
        else:
            out.append(f"{head}, the largest batch size B = {eq['largest_batch_size']} gave the best val_acc, "
                       f"{eq['largest_val_acc']:.4f}.")
    pd = report.get("per_doubling")
    if pd:
        b = pd["batch_size"]
        steps = ", ".join(f"{g:+.4f} ({lo}->{hi})" for g, lo, hi in zip(pd["gain_per_doubling"], b, b[1:]))
        if pd["fell_off_at"] is not None:
            tail = (f"the first interval gaining less than {pd['gain_floor']} per doubling starts at "
                    f"B = {pd['fell_off_at']}")
        else:
            tail = f"every doubling up to B = {b[-1]} gained at least {pd['gain_floor']}"
        out.append(f"Best val_acc per batch size changed per doubling of B by {steps}; {tail}.")
    st = report.get("steps_to_target")
    if st and "fit" in st:
        f = st["fit"]
        out.append(f"Updates to reach val_acc {st['target_val_acc']}: fit S = S_min (1 + B_crit/B) gives S_min = "
                   f"{f['s_min']:.3g} updates and B_crit = {f['b_crit']:.3g} examples; above B = "
                   f"{f['speedup_below_1p5_above']:.3g} each doubling of B saves less than a third of the updates.")
    ln = report.get("loss_noise")
    if ln and "fit_skipped" in ln:
        out.append(f"Loss noise: no slope fitted ({ln['fit_skipped']}).")
    if ln and "slope" in ln:
        trend = "fell" if ln["slope"] < 0 else "rose"
        out.append(f"Loss noise {trend} with batch size with log-log slope {ln['slope']:+.2f} (theory on a fixed "
                   f"model: {ln['theory_slope']}) over {sum(ln['in_fit'])} trials with B <= N/8 = "
                   f"{ln['fit_max_batch_size']:.0f}.")
    gn = report.get("grad_noise")
    if gn:
        c = gn["critical_batch_size"]
        above = ", ".join(map(str, gn["batch_sizes_above"])) or "none"
        out.append(f"Gradient noise scale at the end of training: median {gn['median_final']:.3g} examples (range "
                   f"{gn['min_final']:.3g}-{gn['max_final']:.3g}); critical batch size estimate {c['value']:.3g} "
                   f"({c['source']}); batch sizes tried above it: {above}.")
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

