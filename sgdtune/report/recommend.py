"""The answer of a study: which batch size to train with, its lr and budget, and why.

Pure functions over the report's numbers (plain dicts and lists): no torch, no optuna, no
mlflow. The rule (docs/science.md, section 8):

1. A batch size's accuracy is the best final val_acc of its complete trials, with that
   trial's SE. It is *within noise* of the study's best when the one-sided test
   best - acc_B < 2 sqrt(SE_best^2 + SE_B^2) passes.
2. Goal `fastest` (the default): among those batch sizes, the one that reaches the goal
   accuracy (report/time_to_accuracy.py) in the fewest seconds on this device; times within
   TIME_TIE of the fastest are a tie, broken by fewer examples.
   `fewest-examples`: the fewest examples to the goal (ties: fewer seconds).
   `best-accuracy`: the batch size of the best val_acc.
3. The evidence is thin when a batch size has fewer than MIN_COMPLETE complete trials, or
   its best trial's lr lies at the edge of the lr search range (then the range, not B,
   may decide the outcome: Shallue et al. 2019). The answer says so and gives the command
   that gathers the missing evidence.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import math
import shlex
from typing import Any

GOALS = ("fastest", "fewest-examples", "best-accuracy")
DEFAULT_GOAL = "fastest"
NOISE_SE = 2.0  # one-sided: best - acc_B < NOISE_SE x combined SE is "within noise"
TIME_TIE = 0.05  # seconds within 5% of the fastest are a tie (step times vary by a few % run to run)
MIN_COMPLETE = 2  # complete trials per batch size before its best is trusted
LR_EDGE = 0.1  # a best lr in the outer 10% of the log lr range (either end) is "at the edge"
WIDEN = 4.0  # the suggested new lr bound: 4x past the old one
NOT_ENOUGH = "not enough evidence"


def within_noise(acc: float, se: float | None, best: float, best_se: float | None) -> tuple[bool, float | None]:
    """(passes, combined SE): the one-sided test best - acc < NOISE_SE sqrt(se^2 + best_se^2).
    Without SEs only the best itself passes."""
    if se is None or best_se is None:
        return acc >= best, None
    combined = math.hypot(se, best_se)
    return best - acc < NOISE_SE * combined or acc >= best, combined


def lr_position(lr: float | None, search: dict | None) -> float | None:
    """Where lr lies in its search range, 0 (low) to 1 (high), on the log scale when the
    range is; None when lr was not searched."""
    if lr is None or not search or search.get("low") is None or search.get("high") is None:
        return None
    lo, hi = search["low"], search["high"]
    if search.get("log"):
        lr, lo, hi = math.log(lr), math.log(lo), math.log(hi)
    return None if hi <= lo else (lr - lo) / (hi - lo)


def thin_evidence(batches: dict, lr_search: dict | None, untried: list[str] = ()) -> list[dict]:
    """Batch sizes whose evidence is too thin: fewer than MIN_COMPLETE complete trials (`untried`:
    tried without any), or the best trial's (base) lr within LR_EDGE of an end of the lr
    search range."""
    out = [{"batch_size": b, "kind": "few_trials", "n_complete": 0, "why": f"B = {b}: no complete trial"}
           for b in untried]
    for i, b in enumerate(batches["label"]):
        n = batches["n_complete"][i]
        if n < MIN_COMPLETE:
            out.append({"batch_size": b, "kind": "few_trials", "n_complete": n,
                        "why": f"B = {b}: {n} complete trial{'s' * (n != 1)}, fewer than {MIN_COMPLETE}"})
            continue
        where = lr_position(batches["best_lr_base"][i], lr_search)
        if where is not None and (where < LR_EDGE or where > 1 - LR_EDGE):
            end = "high" if where > 0.5 else "low"
            out.append({"batch_size": b, "kind": f"lr_at_{end}_edge", "lr": batches["best_lr_base"][i],
                        "why": f"B = {b}: its best lr {batches['best_lr_base'][i]:.3g} lies at the {end} edge of "
                               f"the lr search range {lr_search['low']:.3g}-{lr_search['high']:.3g}"})
    return out


def next_command(thin: list[dict], lr_search: dict | None, n_sizes: int, n_finished: int,
                 study_args: list[str] | None, prog: str = "sgdtune study") -> str:
    """A command that gathers the missing evidence: more trials (each batch size given
    MIN_COMPLETE more than the thinnest has) and, where a best lr sits at an edge, the lr
    range widened WIDEN-fold past that edge."""
    sets = []
    ends = {t["kind"] for t in thin}
    if lr_search and "lr_at_high_edge" in ends:
        sets += ["--set", f"search.lr.high={lr_search['high'] * WIDEN:.3g}"]
    if lr_search and "lr_at_low_edge" in ends:
        sets += ["--set", f"search.lr.low={lr_search['low'] / WIDEN:.3g}"]
    short = max([MIN_COMPLETE - t["n_complete"] for t in thin if t["kind"] == "few_trials"] or [0])
    more = max(short, 1 if sets else 0) * max(n_sizes, 1) * 2  # x2: about half the trials get pruned
    return shlex.join([*prog.split(), *(study_args or ["EXPERIMENT.toml"]), "--extend", *sets,
                       "--n-trials", str(n_finished + more)])


def pick(batches: dict, eligible: list[int], goal: str) -> tuple[int, str]:
    """Index of the batch size the goal picks among `eligible` ones, and how it was decided."""
    if goal == "best-accuracy":
        i = max(eligible, key=lambda i: (batches["best_val_acc"][i], -i))
        return i, "the best val_acc"
    timed = [i for i in eligible if batches["updates"][i] is not None]
    if not timed:  # nothing reached the goal accuracy: fall back to accuracy
        i = max(eligible, key=lambda i: (batches["best_val_acc"][i], -i))
        return i, "the best val_acc (no batch size within noise reached the goal accuracy)"
    seconds = {i: batches["seconds"][i] for i in timed if batches["seconds"][i] is not None}
    if goal == "fewest-examples":
        i = min(timed, key=lambda i: (batches["examples"][i], seconds.get(i, math.inf)))
        return i, "the fewest examples to the goal accuracy"
    if len(seconds) < len(timed):  # no time for some: updates are the only common measure
        i = min(timed, key=lambda i: (batches["updates"][i], batches["examples"][i]))
        return i, "the fewest updates to the goal accuracy (no time per update for every batch size)"
    fastest = min(seconds.values())
    tied = [i for i in timed if seconds[i] <= fastest * (1 + TIME_TIE)]
    i = min(tied, key=lambda i: (batches["examples"][i], seconds[i]))
    how = "the fewest seconds to the goal accuracy on this device"
    if len(tied) > 1:
        how += (f" (B = {', '.join(batches['label'][j] for j in sorted(tied))} tie within "
                f"{TIME_TIE:.0%}; fewest examples among them)")
    return i, how


def _count(n: float | None) -> str:
    return "?" if n is None else f"{n:,.0f}"


def _seconds(s: float | None) -> str:
    return "no time" if s is None else f"{s:.3g} s"


def recommend(batches: dict, goal: str = DEFAULT_GOAL, *, goal_text: str, lr_search: dict | None = None,
              critical: dict | None = None, profile: dict | None = None, device: str | None = None,
              n_finished: int = 0, study_args: list[str] | None = None, untried: list[str] = ()) -> dict:
    """The recommendation as report.json's `recommendation`.

    batches: per batch size, or per octave of B on a continuous range (ascending), lists
    "label", "n_complete", and of the best trial there "best_val_acc", "best_val_acc_se",
    "best_number", "best_batch_size", "best_lr", "best_lr_base" (Optuna's, before any lr
    scaling), "best_budget" (text); and of the trial that reached the goal accuracy in the
    fewest updates (time_to_accuracy's per_batch) "number", "batch_size", "lr", "budget",
    "updates", "examples", "seconds", "time_source" (None where none reached it).
    untried: labels of batch sizes tried without a complete trial. study_args: the study
    command's arguments (experiment file, flags), which the next command repeats.
    critical: steps_to_target's fit (b_crit, speedup_below_1p5_above, b_crit_ci) or None.
    profile: the device profile (its flat_up_to, flat_rule) or None.
    """
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)}; got {goal!r}")
    n = len(batches["label"])
    top = max(range(n), key=lambda i: (batches["best_val_acc"][i], -i))
    best, best_se = batches["best_val_acc"][top], batches["best_val_acc_se"][top]
    tests = [within_noise(batches["best_val_acc"][i], batches["best_val_acc_se"][i], best, best_se)
             for i in range(n)]
    eligible = [i for i in range(n) if tests[i][0]]
    i, how = pick(batches, eligible, goal)
    # the named trial: the one that reached the goal first at B, else B's best
    timed = batches["number"][i] is not None and goal != "best-accuracy"
    b = batches["batch_size"][i] if timed else batches["best_batch_size"][i]
    number = batches["number"][i] if timed else batches["best_number"][i]
    lr = batches["lr"][i] if timed else batches["best_lr"][i]
    budget = batches["budget"][i] if timed else batches["best_budget"][i]
    thin = thin_evidence(batches, lr_search, untried)
    out: dict[str, Any] = {
        "goal": goal, "goals": list(GOALS), "decided_by": how,
        "batch_size": b, "lr": lr, "budget": budget, "number": number,
        "val_acc": batches["best_val_acc"][i], "val_acc_se": batches["best_val_acc_se"][i],
        "seconds": batches["seconds"][i], "updates": batches["updates"][i], "examples": batches["examples"][i],
        "epoch": batches.get("epoch", [None] * n)[i],
        "time_source": batches["time_source"][i], "goal_accuracy": goal_text,
        "within_noise": [batches["label"][j] for j in eligible],
        "test": f"one-sided: best val_acc - val_acc(B) < {NOISE_SE:g} sqrt(SE_best^2 + SE_B^2), each the "
                "SE of the best trial at that B",
        "test_short": f"one-sided test: difference < {NOISE_SE:g} combined SE",
        "best": {"batch_size": batches["best_batch_size"][top], "val_acc": best, "val_acc_se": best_se},
        "evidence": "thin" if thin else "enough", "thin": thin,
    }
    if thin:
        out["next_command"] = next_command(thin, lr_search, n + len(untried), n_finished, study_args)
    out["reasons"] = reasons(batches, i, top, tests, out, critical, profile, device)
    out["sentence"] = sentence(out)
    return out


def reasons(batches: dict, i: int, top: int, tests: list, rec: dict, critical: dict | None,
            profile: dict | None, device: str | None) -> list[str]:
    """The recommendation's reasons, one plain sentence each."""
    b = batches["label"]
    acc, se = batches["best_val_acc"], batches["best_val_acc_se"]

    def pm(k: int) -> str:
        return f"{acc[k]:.4f}" + (f" ± {se[k]:.4f}" if se[k] is not None else "")

    out = []
    if i == top:
        out.append(f"Accuracy: B = {b[i]} gave the best val_acc of the study, {pm(i)} (trial "
                   f"{batches['best_number'][i]}).")
    else:
        combined = tests[i][1]
        diff = f"difference {acc[i] - acc[top]:+.4f}" + (f" ± {combined:.4f} (combined SE)" if combined else "")
        out.append(f"Accuracy: B = {b[i]} reached val_acc {pm(i)}, within noise of the best, {pm(top)} at "
                   f"B = {batches['best_batch_size'][top]} ({diff}; {rec['test_short']}).")
    others = [x for x in rec["within_noise"] if x != b[i]]
    left = [x for x in b if x not in rec["within_noise"]]
    out.append(f"Within noise of the best: B = {', '.join(rec['within_noise'])}"
               + (f"; beyond it: B = {', '.join(left)}." if left else "; no batch size tried is beyond it.")
               if others or left else f"Only B = {b[i]} completed a trial.")
    where = f" on this device ({device})" if device else " on this device"
    source = {"profile": "seconds from the device profile's time per update",
              "measured": "seconds from the trials' measured compute time per update (no device profile)"}
    if rec["updates"] is not None:
        at = [f"the smallest, B = {b[0]}, {_seconds(batches['seconds'][0])}" if batches["updates"][0] is not None
              else f"the smallest, B = {b[0]}, never reached it"]
        if len(b) > 1:
            at.append(f"the largest, B = {b[-1]}, {_seconds(batches['seconds'][-1])}"
                      if batches["updates"][-1] is not None else f"the largest, B = {b[-1]}, never reached it")
        at_epoch = f"epoch {rec['epoch']}, " if rec["epoch"] else ""
        out.append(f"Time to accuracy{where}: B = {rec['batch_size']} reaches {rec['goal_accuracy']} in "
                   f"{_seconds(rec['seconds'])} ({at_epoch}{_count(rec['updates'])} updates, "
                   f"{_count(rec['examples'])} examples); {'; '.join(at)} "
                   f"({source.get(rec['time_source'] or '', 'no time measured')}).")
    if critical:
        ci = critical.get("b_crit_ci") or {}
        interval = (f", {ci['level']:.0%} interval {ci['ci_low']:.3g} to "
                    f"{'unbounded' if ci.get('ci_high') is None else format(ci['ci_high'], '.3g')}") if ci else ""
        out.append(f"Critical batch size: B_crit ≈ {critical['b_crit']:.3g} examples (S(B) fit to updates to "
                   f"target{interval}): past B ≈ {critical['speedup_below_1p5_above']:.3g} each doubling of B saves "
                   "less than a third of the updates.")
    if profile and profile.get("flat_up_to"):
        rule = f" ({profile['flat_rule']})" if profile.get("flat_rule") else ""
        out.append(f"Hardware: an update costs nearly the same time from B = {min(profile['batch_size'])} to "
                   f"B = {profile['flat_up_to']}{rule}; below B = {profile['flat_up_to']} the device is "
                   "underused (a larger batch is almost free per update).")
    elif not profile:
        out.append("Hardware: no device profile in this study; times per update are the trials' own measured "
                   "compute time, which varies with the load on the machine.")
    if rec["thin"]:
        out.append(f"Evidence: {NOT_ENOUGH}: " + "; ".join(t["why"] for t in rec["thin"])
                   + ". More trials (or a wider lr range) could change the answer.")
    return out


def sentence(rec: dict) -> str:
    """The recommendation in one sentence: B, its lr and budget, the goal and how it decided."""
    budget = f", {rec['budget']}" if rec.get("budget") else ""
    lr = f", lr {rec['lr']:.3g}" if rec.get("lr") is not None else ""
    head = f"Train with B = {rec['batch_size']}{lr}{budget} (trial {rec['number']})"
    why = f": {rec['decided_by']} among the batch sizes within noise of the best val_acc"
    if rec["goal"] == "best-accuracy":
        why = ": the best val_acc of the study"
    if rec["evidence"] == "thin":
        return f"Not enough evidence yet; provisionally: {head}{why}. Next: {rec['next_command']}"
    return f"{head}{why}."


def lines(rec: dict) -> list[str]:
    """The recommendation as the console prints it: the sentence, then its reasons."""
    return [f"recommendation: {rec['sentence']}", *(f"  - {r}" for r in rec["reasons"])]


MAX_TAG_CHARS = 8000  # MLflow's limit on a tag's value


def run_records(rec: dict) -> tuple[dict[str, str], dict[str, float]]:
    """(tags, metrics) of the study's parent MLflow run that carry the recommendation; its
    description (`mlflow.note.content`, shown on the run's page) holds the reasons."""
    tags = {"sgdtune.recommended_batch_size": str(rec["batch_size"]), "sgdtune.recommendation": rec["sentence"],
            "sgdtune.recommendation_goal": rec["goal"], "sgdtune.recommendation_evidence": rec["evidence"],
            "mlflow.note.content": note(rec)}
    metrics = {"recommended_batch_size": float(rec["batch_size"])}
    if rec.get("lr") is not None:
        metrics["recommended_lr"] = float(rec["lr"])
    return {k: v[:MAX_TAG_CHARS] for k, v in tags.items()}, metrics


def note(rec: dict) -> str:
    """The MLflow parent run's description (markdown): the sentence and its reasons."""
    return "\n".join([f"**Recommendation ({rec['goal']}):** {rec['sentence']}", "",
                      *(f"- {r}" for r in rec["reasons"])])
