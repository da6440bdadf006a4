"""What the console and the report say of a device profile (profile/measure.py): its plain
sentences (the flat range, the largest B that fits, what was not timed, the peak throughput),
one row of text per B for the tables, and the per-B table as CSV (`profile.csv` beside a
study's report).

Standard library only, torch never loaded: the report imports these, and
`sgdtune profile` prints them.

Layer: profile (the device's hardware profile; docs/architecture.md).
"""

from __future__ import annotations

from .measure import FLAT_FACTOR, MEMORY_MARGIN


def sentences(profile: dict) -> list[str]:
    """The profile in plain sentences: the flat range, the largest B that fits, what was skipped."""
    bs, secs = profile["batch_size"], profile["seconds_per_update"]
    flat = profile["flat_up_to"]
    at_flat = secs[bs.index(flat)]
    out = []
    if flat > bs[0]:
        out.append(f"Up to B = {flat} a larger batch is almost free on {profile['device']}: one update takes "
                   f"{at_flat * 1e3:.3g} ms against {secs[0] * 1e3:.3g} ms at B = 1 (within {FLAT_FACTOR:g}x), "
                   f"so {flat}x the examples per update cost about as much time.")
    elif len(bs) == 1:
        out.append(f"Only B = 1 was timed ({secs[0] * 1e3:.3g} ms per update on {profile['device']}): "
                   "no flat range measured.")
    else:
        out.append(f"No batch size is almost free on {profile['device']}: already B = {bs[1]} takes more than "
                   f"{FLAT_FACTOR:g}x the {secs[0] * 1e3:.3g} ms of an update at B = 1.")
    largest = profile["largest_batch_size"]
    peak = profile["peak_mem_mb"][bs.index(largest)]
    available = profile.get("memory_available_mb")
    held = "" if peak is None else f" ({peak:.3g} MiB" + ("" if available is None else f" of {available:.4g} MiB "
                                                          "available") + ")"
    why_not = " ".join(profile["skipped"].values())
    if "memory" in why_not:
        out.append(f"The largest batch size that fits in memory with a {1 - MEMORY_MARGIN:.0%} margin is "
                   f"B = {largest}{held}; larger ones were not timed.")
    elif "time budget" in why_not:
        out.append(f"The largest batch size timed within the {profile['budget_s']:g} s budget is B = {largest}{held}; "
                   "larger ones may fit too.")
    else:
        out.append(f"Every batch size asked for fits in memory with a {1 - MEMORY_MARGIN:.0%} margin, up to "
                   f"B = {largest}{held}.")
    if profile["skipped"]:
        reasons: dict[str, list[str]] = {}
        for b, why in profile["skipped"].items():
            reasons.setdefault(why, []).append(b)
        out += [f"Not timed: B = {', '.join(b)} ({why})." for why, b in reasons.items()]
    examples_per_s = profile["examples_per_second"]
    best = max(range(len(bs)), key=lambda i: examples_per_s[i])
    out.append(f"Throughput peaks at B = {bs[best]}: {examples_per_s[best]:.3g} examples/s "
               f"({examples_per_s[best] / examples_per_s[0]:.3g}x that of B = 1).")
    return out


def table_rows(profile: dict) -> list[dict[str, str]]:
    """One row of text per B that ran: B, threads, ms per update (median, IQR), examples/s, peak MiB."""
    threads = profile.get("threads_per_batch_size") or [profile["threads"]] * len(profile["batch_size"])
    return [{"B": str(b), "threads": str(t), "ms/update": f"{s * 1e3:.4g}", "IQR ms": f"{iqr * 1e3:.2g}",
             "examples/s": f"{e:.4g}", "peak MiB": "" if m is None else f"{m:.3g}"}
            for b, t, s, iqr, e, m in zip(profile["batch_size"], threads, profile["seconds_per_update"],
                                          profile["seconds_per_update_iqr"], profile["examples_per_second"],
                                          profile["peak_mem_mb"])]


CSV_COLUMNS = ("batch_size", "threads", "seconds_per_update", "seconds_per_update_iqr", "examples_per_second",
               "peak_mem_mb")


def to_csv(profile: dict) -> str:
    """The per-B table as CSV (full precision; an empty cell where no peak was measured)."""
    threads = profile.get("threads_per_batch_size") or [profile["threads"]] * len(profile["batch_size"])
    columns = {**{k: profile[k] for k in CSV_COLUMNS if k != "threads"}, "threads": threads}
    lines = [",".join(CSV_COLUMNS)]
    for i in range(len(profile["batch_size"])):
        lines.append(",".join("" if columns[k][i] is None else repr(columns[k][i]) for k in CSV_COLUMNS))
    return "\n".join(lines) + "\n"
