"""python -m benchmarks [--tiny] [--out PATH] [--only GROUP,...]: run, print a table, write JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from .common import Check, quiet

GROUPS = ("trainer", "tracking", "handwired", "scale", "startup", "batched", "storage", "busy")
MODULES = {"trainer": "trainer", "tracking": "tracking_overhead", "handwired": "handwired",
           "scale": "scale", "startup": "startup", "batched": "batched", "storage": "storage_load", "busy": "busy"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sgdtune side by side with a minimal PyTorch loop and the hand-wired Optuna + MLflow "
        "pattern; each figure is a median ratio of alternated measurements.",
        epilog="examples:\n  python -m benchmarks                 # full size, several minutes\n"
        "  python -m benchmarks --tiny          # seconds: checks that every benchmark runs\n"
        "  python -m benchmarks --only trainer,startup --out /tmp/r.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tiny", action="store_true", help="tiny sizes and few rounds (CI): runs, not figures")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default: {DEFAULT_OUT})")
    p.add_argument("--only", help=f"comma-separated groups (default: all of {', '.join(GROUPS)})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads, here and in the subprocesses (default 1: on a shared "
                   "machine two threads wait on each other at every op and the figures swing 40x)")
    return p


def print_table(checks: list[Check], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("group", "left"), ("figure", "left"), ("value", "right"), ("target", "right"),
                         ("ok", "center"), ("how", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for c in checks:
        target = "" if c.target is None else f"{c.op} {c.target:g}"
        ok = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[c.ok]
        table.add_row(c.group, c.name, f"{c.value:.3g} {c.unit}", target, ok, c.detail)
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    groups = GROUPS if not args.only else tuple(g.strip() for g in args.only.split(","))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"error: --only: must name groups among {', '.join(GROUPS)}; got {', '.join(unknown)}", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # subprocesses
    import torch

    torch.set_num_threads(args.threads)
    quiet()
    checks: list[Check] = []
    for group in groups:
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{MODULES[group]}")
        found = module.run(tiny=args.tiny)
        found = [Check(**{k: v for k, v in f.items() if k != "ok"}) if isinstance(f, dict) else f for f in found]
        print(f"{group}: {len(found)} figures in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        checks += found
    tiny = " (--tiny: sizes too small for the figures to mean anything)" if args.tiny else ""
    print_table(checks, f"sgdtune benchmarks, torch threads: {args.threads}{tiny}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([c.as_json() for c in checks], indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
