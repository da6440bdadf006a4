"""Drawing the sweep report: report dict -> one self-contained HTML page.

Reads nothing but the report dict (report.json's content): every number on the page comes
from there. plotly.js is inlined once, so the page opens offline and asks the network nothing.
Here: the page's assembly (its sections in order, notes, tables); the plots are drawn in
figures.py from the blocks in figure_parts.py.

Layer: report (what a finished study says; no torch; docs/architecture.md).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources

from ..profile.measure import KEYS as PROFILE_KEYS
from ..profile.words import sentences
from .figure_parts import interval_text
from .figures import (
    fig_accuracy,
    fig_compute,
    fig_grad_noise,
    fig_history,
    fig_importance,
    fig_learning_curves,
    fig_loss_noise,
    fig_mccandlish,
    fig_pareto,
    fig_profile,
    fig_sharpness,
    fig_steps,
)
from .summary import fmt, octave_trend_sentence

TEMPLATE = "report_page.html"  # in the sgdtune package folder, beside the other page templates
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _plot(fig, div_id: str) -> str:
    # A fixed div id keeps the page a pure function of report.json (plotly picks a random one).
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def _table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """An HTML table; columns are (key, heading, format spec)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k), f))}</td>" for k, _, f in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


NAV = (("answer", "answer"), ("summary", "summary"), ("accuracy", "accuracy"), ("octaves", "octaves"),
       ("curves", "curves"), ("loss-noise", "loss noise"),
       ("grad-noise", "noise scale"), ("steps", "steps"), ("mccandlish", "B_noise"), ("sharpness", "sharpness"),
       ("compute", "compute"), ("profile", "device"), ("pareto", "Pareto"),
       ("history", "history"), ("importance", "importance"), ("top", "top trials"), ("repro", "reproducibility"))


def render_html(report: dict) -> str:
    """The page, drawn from the report dict alone."""
    from plotly.offline import get_plotlyjs

    timings = report["volatile"]["timings"]
    compute = timings.get("compute")
    profile = report["volatile"].get("profile")
    parts: list[str] = []

    def section(anchor: str, title: str, key: str | None, draw) -> None:
        """A section drawn by draw(), or a one-line note why not when report[key] is absent."""
        if key is None or key in report:
            body = draw()
        else:
            body = f'<p class="skip">Not shown: {html.escape(report["skipped"].get(key, "no data"))}.</p>'
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>')

    def plot(fig_of, key: str, div_id: str):
        return lambda: _plot(fig_of(report[key]), div_id) + _notes(notes(report, key))

    no_time = '<p class="skip">Not shown: no complete trial with a compute time.</p>'
    section("answer", "Which batch size, and why", "recommendation", lambda: _recommendation_html(report))
    section("summary", "Summary", None, lambda: _summary_html(report["summary"], timings.get("summary", [])))
    section("accuracy", "Accuracy and generalization gap against batch size", "accuracy",
            lambda: _plot(fig_accuracy(report["accuracy"], report.get("per_octave")), "plot-accuracy")
            + _notes(notes(report, "accuracy")))
    section("octaves", "Per octave of batch size", "per_octave", lambda: _octave_table(report["per_octave"]))
    section("curves", "Learning curves across the batch-size range", "learning_curves",
            plot(fig_learning_curves, "learning_curves", "plot-curves"))
    section("loss-noise", "Loss noise against batch size", "loss_noise",
            plot(fig_loss_noise, "loss_noise", "plot-loss-noise"))
    section("grad-noise", "Gradient noise scale and the critical batch size", "grad_noise",
            plot(fig_grad_noise, "grad_noise", "plot-grad-noise"))
    section("steps", "Updates to target against batch size", "steps_to_target",
            plot(fig_steps, "steps_to_target", "plot-steps"))
    section("mccandlish", "McCandlish's model beside the sweep: B_noise, the best lr, S(B) and E(B)", "mccandlish",
            plot(fig_mccandlish, "mccandlish", "plot-mccandlish"))
    section("sharpness", "Sharpness against batch size and the edge of stability", "sharpness",
            plot(fig_sharpness, "sharpness", "plot-sharpness"))
    section("compute", "Compute time and throughput against batch size", None,
            lambda: _plot(fig_compute(compute), "plot-compute") if compute else no_time)
    section("profile", "This device: time per update against batch size", None, lambda: _profile_html(profile))
    section("pareto", "Pareto front of val_acc against compute time", None,
            lambda: _plot(fig_pareto(compute, timings["pareto"]), "plot-pareto") if compute else no_time)
    section("history", "Optimization history", "history", plot(fig_history, "history", "plot-history"))
    section("importance", "Parameter importances", "importance", plot(fig_importance, "importance", "plot-importance"))
    section("top", "Top trials", "top_trials", lambda: _top_table(report))
    section("repro", "Reproducibility", None, lambda: _reproducibility_html(report))
    title = html.escape(f"sgdtune report: {report['study']['name']}")
    page = resources.files("sgdtune").joinpath(TEMPLATE).read_text()
    return (page.replace("<!--TITLE-->", title)
                .replace("<!--NAV-->", "".join(f'<a href="#{a}">{t}</a>' for a, t in NAV))
                .replace("<!--GENERATED-->", html.escape(f"generated {report['volatile']['dates']['generated']}"))
                .replace("<!--BODY-->", "\n".join(parts))
                .replace("/*PLOTLYJS*/", get_plotlyjs()))  # last: markers inside plotly.js stay untouched


def notes(report: dict, key: str) -> list[str]:
    """The uncertainty behind a section's plot, in words: how its error bars and intervals are made."""
    r = report[key]
    if key == "accuracy":
        out = [f"Error bars: ±1 standard error of val_acc, {r['se_rule']}."]
        return out + ([f"{r['se_missing']}."] if "se_missing" in r else [])
    if key == "loss_noise":
        out = ["Every trial with a loss noise enters, at any B < n_train (successive differences within an epoch "
               "follow σ/√B at every B < N: no N/8 cut)."]
        ex = r["excluded"]
        if ex["number"]:
            out.append(f"Left out, {ex['reason']}: trials " + ", ".join(
                f"{n} (B = {b}{', full batch' * f})" for n, b, f in zip(ex["number"], ex["batch_size"],
                                                                      ex["full_batch"])) + ".")
        if "slope_ci" in r:
            ci = r["slope_ci"]
            out.append(f"Slope {r['slope']:+.3f}, {interval_text(ci, '+.3f')} ({ci['method']}, {ci['resamples']} "
                       f"resamples of the trials, seed {ci['seed']})"
                       + (": the interval includes 0, no trend, so no fitted line is drawn." if not r.get("trend", True)
                          else "."))
        return out
    if key == "importance":
        out = [f"{r['method']}: {r['method_description']}."] if "method_description" in r else []
        if "dashboard_method" in r:
            out.append(f"optuna-dashboard shows {r['dashboard_method']}: {r['dashboard_method_description']}; the "
                       "two answer different "
                       "questions (variance over the whole space against what sets the best trials apart), so their "
                       "rankings can differ." + ("" if "ped_anova" in r else
                                                 f" Not computed here: {r.get('ped_anova_skipped', '')}."))
        return out
    if key == "steps_to_target" and "fit" in r:
        f = r["fit"]
        if "b_crit_ci" not in f:
            return [f"No interval: {f.get('ci_skipped', 'bootstrap failed')}."]
        ci = f["b_crit_ci"]
        return [f"B_crit {f['b_crit']:.4g} ({interval_text(ci, '.4g')}), S_min {f['s_min']:.4g} "
                f"({interval_text(f['s_min_ci'], '.4g')}): {ci['method']} over {ci['resamples']} resamples of the "
                f"trials (seed {ci['seed']}), each refitted to the fewest updates per batch size; "
                f"{ci['resamples_failed']} resamples with a single batch size left out."]
    if key == "grad_noise":
        out = [f"Median over {r['median_over']}: {r['median_final']:.4g} examples."]
        se = [e for e in r["final"]["grad_noise_scale_se"] if e is not None]
        if se and not any(se):
            out.append("Every standard error is 0, as for a probe of the whole training set: no sampling error, "
                       "the value is exact for the final weights.")
        if r["n_bounds"]:
            out.append(f"{r['n_bounds']} trial{'s' * (r['n_bounds'] > 1)} gave only a lower bound (open triangles): "
                       "|G|² was within 2 SE of 0.")
        return out
    if key == "mccandlish":
        from .mccandlish import mccandlish_notes

        return mccandlish_notes(r)
    if key == "sharpness":
        out = ["Edge of stability: full-batch gradient descent with heavy-ball momentum m on a quadratic is stable "
               "while lr·λ_max < 2(1 + m): 3.8 at m = 0.9, 2 without momentum."]
        out += [f"{r[k]}." for k in ("adam", "weight_decay_note") if k in r]
        return out + ([f"{r['full_batch_skipped']}."] if "full_batch_skipped" in r else [])
    return []


def _profile_html(profile: dict | None) -> str:
    """The device profile's plot and sentences, or why not."""
    if not profile:
        return '<p class="skip">Not shown: the study ran without a device profile (profile = false).</p>'
    missing = [k for k in PROFILE_KEYS if k not in profile]
    if missing:
        return f'<p class="skip">Not shown: the recorded device profile lacks {html.escape(", ".join(missing))}.</p>'
    return _plot(fig_profile(profile), "plot-profile") + _notes(profile_notes(profile))


def profile_notes(profile: dict) -> list[str]:
    """The profile's sentences (sgdtune/profile/measure.py), with how it was measured and on what."""
    threads = profile["threads"]
    return sentences(profile) + [
        f"One update of {profile['model']} ({profile['dtype']}, threads {threads}) as the trainer makes it: the "
        f"median over timed updates after a warm-up; bars: half the interquartile range. Flat range: "
        f"{profile['flat_rule']}. Timed within a budget of {profile['budget_s']:g} s"
        + (", read from the cache of an earlier run." if profile["cached"] else ".")]


def _octave_table(po: dict) -> str:
    """Trials and the best val_acc per octave of B, then the trend over octaves in words."""
    keys = ("label", "n_trials", "n_complete", "n_pruned", "n_fail", "best_val_acc", "best_val_acc_se",
            "best_batch_size", "best_lr", "best_number", "median_val_acc")
    rows = [dict(zip(keys, values)) for values in zip(*(po[k] for k in keys))]
    table = _table(rows, [
        ("label", "B (octave)", ""), ("n_trials", "trials", ""), ("n_complete", "complete", ""),
        ("n_pruned", "pruned", ""), ("n_fail", "failed", ""), ("median_val_acc", "median val_acc", ".4f"),
        ("best_val_acc", "best val_acc", ".4f"), ("best_val_acc_se", "± SE", ".4f"), ("best_batch_size", "at B", ""),
        ("best_lr", "lr", ".3g"), ("best_number", "trial", "")])
    return table + _notes([octave_trend_sentence(po["fit"]), f"Rule: {po['fit']['rule']}."])


def _recommendation_html(report: dict) -> str:
    """The recommendation in a sentence and its reasons, then time to accuracy per batch size."""
    rec = report["recommendation"]
    out = [f'<p class="answer"><strong>{html.escape(rec["sentence"])}</strong></p>',
           "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in rec["reasons"]) + "</ul>",
           _notes([f"Goal: {rec['goal']} (others: {', '.join(g for g in rec['goals'] if g != rec['goal'])}; "
                   f"`--goal` of the study and report commands). Within noise: {rec['test']}."])]
    tta = report.get("time_to_accuracy")
    if tta:
        pb = tta["per_batch"]
        rows = [{"label": pb["label"][i], "n_complete": pb["n_complete"][i], "n_reached": pb["n_reached"][i],
                 "number": pb["number"][i], "batch_size": pb["batch_size"][i], "updates": pb["updates"][i],
                 "examples": pb["examples"][i], "seconds": pb["seconds"][i],
                 "measured_seconds": pb["measured_seconds"][i], "time_source": pb["time_source"][i],
                 "within": "yes" if pb["label"][i] in rec["within_noise"] else "no"} for i in range(len(pb["label"]))]
        out.append(f"<h3>Time to accuracy: to reach {html.escape(tta['goal']['text'])}, per "
                   f"{html.escape(tta['grouped_by'])}</h3>")
        out.append(_table(rows, [
            ("label", "B", ""), ("within", "best val_acc within noise", ""), ("n_complete", "complete", ""),
            ("n_reached", "reached", ""), ("number", "fastest trial", ""), ("batch_size", "its B", ""),
            ("updates", "updates", ",.0f"), ("examples", "examples", ",.0f"), ("seconds", "seconds", ".3g"),
            ("measured_seconds", "measured s", ".3g"), ("time_source", "seconds from", "")]))
        notes = [f"{tta['time_rule']}.", "measured s: the trial's own compute_time_s, pro rata of its updates."]
        if tta["goal"].get("rule"):
            notes.append(f"Reached: {tta['goal']['rule']}.")
        out.append(_notes(notes))
    return "".join(out)


def _notes(lines: list[str]) -> str:
    return "".join(f'<p class="note">{html.escape(t)}</p>' for t in lines)


def _summary_html(sentences: list[str], timing_sentences: list[str]) -> str:
    items = [f"<li>{html.escape(s)}</li>" for s in sentences]
    items += [f'<li class="timing">{html.escape(s)} <em>(timing: varies between runs)</em></li>'
              for s in timing_sentences]
    return "<ul>" + "".join(items) + "</ul>"


def _top_table(report: dict) -> str:
    """The top trials, with their compute time and MLflow run id from "volatile"."""
    v = report["volatile"]
    metric = v["timings"].get("compute", {}).get("time_metric", "compute_time_s")
    run_ids = v.get("mlflow", {}).get("run_ids", {})
    rows = [{**r, "budget": f"{r['budget']}={r['budget_size']}", "run_id": run_ids.get(str(r["number"])),
             "time": v["timings"]["trials"].get(str(r["number"]), {}).get(metric)} for r in report["top_trials"]]
    return _table(rows, [
        ("number", "trial", ""), ("batch_size", "B", ""), ("lr", "lr", ".3g"), ("budget", "budget", ""),
        ("final_val_acc", "val_acc", ".4f"), ("final_val_acc_se", "± SE", ".4f"),
        ("final_test_acc", "test_acc (held out)", ".4f"), ("final_train_acc", "train_acc", ".4f"),
        ("final_gen_gap", "gen_gap", "+.4f"), ("final_loss_noise", "loss noise", ".3g"),
        ("final_grad_noise_scale", "noise scale", ".3g"), ("updates", "updates", ".0f"),
        ("updates_to_target", "to target", ".0f"), ("time", f"{metric}".replace("_", " "), ".3g"),
        ("run_id", "MLflow run id", ""),
    ])


def numeric_key(item: tuple[str, object]) -> tuple[int, float | str]:
    """Sort key of a (key, value) pair whose key is a number as text ("10" after "9"); others after, as text."""
    try:
        return 0, float(item[0])
    except ValueError:
        return 1, item[0]


def _reproducibility_html(report: dict) -> str:
    r = report["reproducibility"]
    mlflow = report["volatile"].get("mlflow", {})
    f = r.get("experiment_file", {})
    sha = f and f"{f['sha256']} ({'matches' if f['sha256_matches'] else 'DIFFERS FROM'} the recorded hash)"
    items = [
        ("study command", r.get("study_command")), ("report command", r["report_command"]),
        ("experiment file", f.get("name")), ("sha256", sha), ("study seed", r.get("study_seed")),
        ("trial seeds", ", ".join(f"{k}: {s}" for k, s in sorted(r["trial_seeds"].items(), key=numeric_key))),
        ("trials by state", ", ".join(f"{k.lower()} {n}" for k, n in r["trials_by_state"].items())),
        ("device", r.get("device")), ("git commit", r.get("git_commit") or "(not a git checkout)"),
        ("package versions", ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())),
        ("MLflow store", mlflow.get("tracking_uri")), ("MLflow parent run", mlflow.get("parent_run_id")),
        ("MLflow UI (runs table)", mlflow.get("ui_url") and f"{mlflow['ui_url']}  (start it: python -m sgdtune.ui)"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items if v not in (None, ""))
    content = f"<pre>{html.escape(f['content'])}</pre>" if f.get("content") else ""
    return f'<table class="kv">{rows}</table>{content}'
