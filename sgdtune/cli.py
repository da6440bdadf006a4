"""Every command line of sgdtune: `python -m sgdtune.study | report | surface | ui`, and the
same as subcommands of the `sgdtune` console script.

The edge between a person and the Python API: each command parses its flags, calls the API,
and turns bad input (`errors.InputError`, raised anywhere below) into one line on stderr and
exit status 2. The modules behind a command are imported inside its main, so `--help` and
the console script load nothing they don't need.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
from typing import Callable, Sequence

from .errors import EXIT_BAD_INPUT, InputError

EXIT_INTERRUPTED = 130


def _bad_input(error: InputError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


# -- sgdtune study --------------------------------------------------------------------------

STUDY_EPILOG = """examples:
  python -m sgdtune.study                                  # experiments/batch_tradeoff.toml
  python -m sgdtune.study experiments/quick.toml           # a sweep of a few seconds
  python -m sgdtune.study experiments/quick.toml --n-trials 8 --seed 1 --report
  python -m sgdtune.study experiments/quick.toml --workers 2
  python -m sgdtune.study X.toml --set train.momentum=0.0 --set data.val_fraction=0.3
  python -m sgdtune.study X.toml --storage postgresql://user@host/db --tracking-uri http://host:5000
"""


def study_parser(prog: str = "python -m sgdtune.study") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run (or resume) an Optuna study over batch size, learning rate and budget; "
        "every trial is an MLflow run.",
        epilog=STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", nargs="?", help="experiment TOML file (default: experiments/batch_tradeoff.toml)")
    p.add_argument("--n-trials", type=int, help="finished trials to reach (a resumed study counts those it has)")
    p.add_argument("--seed", type=int, help="study seed: sampler, and each trial's seed with the trial number")
    p.add_argument("--study-name", help="study name = MLflow experiment name (default: the file's name)")
    p.add_argument("--storage", help="Optuna storage: SQLAlchemy URL or journal file (default: mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, VALUE in TOML syntax (e.g. train.momentum=0.5); repeatable")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS",
                   help="RDB storages: fail and re-run a trial whose worker is silent for 2x SECONDS")
    p.add_argument("--batch-trials", type=int, default=1, metavar="K",
                   help="train up to K trials of one batch size at once as one stacked model (MLPs)")
    p.add_argument("--report", action="store_true", help="write reports/<study>/report.html and .json at the end")
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow (Optuna storage only)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    return p


def study_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune.study") -> int:
    """Run (or resume) a study; 0 when done, 2 on bad input, 130 on Ctrl-C."""
    args = study_parser(prog).parse_args(argv)
    given = list(argv) if argv is not None else sys.argv[1:]
    from .config import default_experiment_path, load_experiment, parse_overrides
    from .tracking import redact_url

    command = f"{prog} " + " ".join(shlex.quote(redact_url(a)) for a in given)
    try:
        overrides = {"n_trials": args.n_trials, "seed": args.seed, "name": args.study_name, "storage": args.storage,
                     "tracking_uri": args.tracking_uri, "timeout_s": args.timeout, "device": args.device,
                     **parse_overrides(args.set)}
        config = load_experiment(args.experiment, **overrides)
        from .console import print_closing, quiet_libraries
        from .study import run_study
        from .stores import locations
        from .timing import resolve_device
        from .writer import TrackingError

        resolve_device(config.device)
    except InputError as e:
        return _bad_input(e)
    quiet_libraries()
    # torch, Optuna and the rest are imported: keep the collector off their objects, so
    # that a full collection (0.1-0.2 s over them) does not land in a trial's timed steps.
    gc.freeze()
    try:
        study = run_study(config, experiment_path=args.experiment or default_experiment_path(), command=command,
                          track=not args.no_tracking, show_progress=not args.no_progress, workers=args.workers,
                          heartbeat=args.heartbeat, batch_trials=args.batch_trials)
    except InputError as e:
        return _bad_input(e)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrackingError as e:  # the store failed mid-study: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    storage_url, tracking_uri = locations(config)
    print_closing(study, config, storage_url, None if args.no_tracking else tracking_uri)
    if args.report:
        from .report import write_report

        folder = write_report(config.name, storage_url, tracking_uri)
        print(f"report:         {folder / 'report.html'}")
    return 0


# -- the `sgdtune` console script -----------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[..., int]]] = {
    "study": ("run (or resume) a study: sgdtune study experiments/quick.toml", study_main),
}


def main(argv: Sequence[str] | None = None) -> int:
    """`sgdtune COMMAND [options]`: runs one command's main."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sgdtune {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (text, _) in COMMANDS.items():
            print(f"  {name:8} {text}")
        print("\n`sgdtune COMMAND --help` explains each command's options.")
        return 0 if argv else EXIT_BAD_INPUT
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        return _bad_input(InputError("command", f"must be one of {', '.join(COMMANDS)}", repr(command)))
    return COMMANDS[command][1](rest, prog=f"sgdtune {command}") or 0


if __name__ == "__main__":
    sys.exit(main())
