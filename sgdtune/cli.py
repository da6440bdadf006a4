"""Every command line of sgdtune: `python -m sgdtune.study | report | surface | ui | profile`, and the
same as subcommands of the `sgdtune` console script.

The edge between a person and the Python API: each command parses its flags, calls the API,
and turns bad input (`errors.InputError`, raised anywhere below) into one line on stderr and
exit status 2. The modules behind a command are imported inside its main, so `--help` and
the console script load nothing they don't need.

One module of about 650 lines on purpose: the edge layer is every command's flags, help text and
examples, one section per command, which a user reads as one manual; nothing imports it.

Layer: edge (the command lines and the Python API; docs/architecture.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InputError, StoreError, StudyGone, TrackingError
from .redact import mask_output, redact


def _bad_input(error: InputError) -> int:
    print(f"error: {redact(str(error))}", file=sys.stderr)  # a driver's message may quote a URL
    return EXIT_BAD_INPUT


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends (then it is raised as usual): pydantic-core,
    which the config imports, turns an interrupt of its own import into a Rust panic."""
    from .interrupts import signals_held

    with signals_held(signal.SIGINT):  # threads started meanwhile keep it blocked
        yield


def interruptible(command_main: Callable[[], int]) -> int:
    """A command's main as its entry point runs it: everything the process prints masked
    (redact.mask_output: MLflow's and Optuna's lines too), and a Ctrl-C that lands outside
    the command's own handling (while it imports torch, say) ending it with one line, not a
    traceback."""
    mask_output()
    try:
        code = command_main()
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        # Exit now: CPython remembers a KeyboardInterrupt that crossed C code running Python
        # (some of torch's start-up does) and, at a normal exit, would end the process with
        # SIGINT instead of this status, however the interrupt was handled.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    return code


# -- sgdtune study --------------------------------------------------------------------------

STUDY_EPILOG = """examples:
  python -m sgdtune.study                                  # experiments/batch_tradeoff.toml
  python -m sgdtune.study experiments/quick.toml           # a sweep of a few seconds
  python -m sgdtune.study experiments/quick.toml --n-trials 8 --seed 1 --report
  python -m sgdtune.study experiments/quick.toml --workers 2
  python -m sgdtune.study experiments/quick.toml --replicates 3   # each trial: mean of 3 seeds
  python -m sgdtune.study X.toml --set train.momentum=0.0 --set data.val_fraction=0.3
  python -m sgdtune.study X.toml --set train.momentum=0.0 --study-name x_m0   # X's study ran with 0.9
  python -m sgdtune.study X.toml --storage postgresql://user@host/db --tracking-uri http://host:5000
"""


def _auto_or_int(text: str) -> int | str:
    """--threads: a count as an int; anything else as given, for the schema to accept ("auto") or refuse."""
    return int(text) if text.strip().isdigit() else text


def study_parser(prog: str = "python -m sgdtune.study") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run (or resume) an Optuna study over batch size, learning rate and budget; "
        "every trial is an MLflow run.",
        epilog=STUDY_EPILOG.replace("python -m sgdtune.study", prog),  # examples as this command is typed
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
    p.add_argument("--workers", type=int, help="worker processes on this machine sharing the study (default: 1, or "
                   "one per --gpus slot)")
    p.add_argument("--gpus", metavar="LIST", help="with --device cuda: the GPUs the workers use, one each in turn "
                   "(indices among the visible GPUs, e.g. 0,2,3; repeat one to run two trials on it: 0,0,1,1)")
    p.add_argument("--threads", type=_auto_or_int, metavar="auto|N",
                   help="torch threads per trial (each worker's): auto = from the step's work and the cores other "
                   "processes leave idle (default), N = always N; also `threads = ...` in the file")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS",
                   help="RDB storages: fail and re-run a trial whose worker is silent for 2x SECONDS")
    p.add_argument("--batch-trials", type=int, default=1, metavar="K",
                   help="train up to K trials of one batch size at once as one stacked model: the built-in MLP "
                   "(batched products), the CNN and factory models without buffers or dropout (torch.func); "
                   "others (BatchNorm, dropout) train one by one; not with --replicates")
    p.add_argument("--replicates", type=int, metavar="R",
                   help="train each sampled configuration with R seeds; its value is their mean (default: 1)")
    changed = p.add_mutually_exclusive_group()
    changed.add_argument("--fresh", action="store_true", help="if the study exists, delete it (Optuna) and start "
                         "again; its MLflow runs stay")
    changed.add_argument("--extend", action="store_true", help="continue an existing study with a changed "
                         "configuration (recorded in the study and its parent run)")
    p.add_argument("--no-profile", action="store_true", help="skip the device profile before the first trial "
                   "(as `profile = false` in the file)")
    p.add_argument("--report", action="store_true", help="write reports/<study>/report.html and .json at the end")
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow (Optuna storage only)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument("--register-model", metavar="NAME",
                   help="at the end, register the best trial's logged model in MLflow's model registry as NAME")
    _goal_flag(p)
    return p


def _goal_flag(p: argparse.ArgumentParser) -> None:
    from .report.recommend import GOALS

    p.add_argument("--goal", choices=GOALS, help="what the recommended batch size optimizes, among those within "
                   "noise of the best val_acc: fastest = least time to accuracy on this device (default), "
                   "fewest-examples, best-accuracy")


def study_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune.study") -> int:
    """Run (or resume) a study; 0 when done, 2 on bad input or a store that fails to write,
    130 on Ctrl-C, 143 on SIGTERM (interrupts.py)."""
    args = study_parser(prog).parse_args(argv)
    if not args.no_tracking:
        # MLflow's writer process starts its 1-2 s of imports now, on another core, while
        # this one imports torch below (store/writer.py); after parsing, so `--help` starts nothing.
        from .store.writer_child import prestart

        prestart()
    given = list(argv) if argv is not None else sys.argv[1:]
    with ctrl_c_deferred():
        from .config import default_experiment_path, load_experiment, parse_overrides
    from .names import check_name

    command = f"{prog} " + " ".join(shlex.quote(redact(a)) for a in given)
    try:
        if args.study_name is not None:
            check_name(args.study_name, "--study-name")  # it names reports/<name>/
        if args.replicates is not None and args.replicates < 1:
            raise InputError("--replicates", "must be >= 1", repr(args.replicates))
        overrides = {"n_trials": args.n_trials, "seed": args.seed, "name": args.study_name, "storage": args.storage,
                     "tracking_uri": args.tracking_uri, "timeout_s": args.timeout, "device": args.device,
                     "replicates": args.replicates, "threads": args.threads,
                     "profile": False if args.no_profile else None, **parse_overrides(args.set)}
        config = load_experiment(args.experiment, **overrides)
        from .store.stores import locations
        from .study.console import one_line_trial_failures, print_closing, print_recommendation, quiet_libraries
        from .study.run import run_study
        from .timing import resolve_device

        resolve_device(config.device)
    except InputError as e:
        return _bad_input(e)
    quiet_libraries()
    one_line_trial_failures()
    from .interrupts import exit_status, stop_on_sigterm

    stop_on_sigterm()  # systemd, Kubernetes, `timeout`: stop as on Ctrl-C, trials ended cleanly
    # torch, Optuna and the rest are imported: keep the collector off their objects, so
    # that a full collection (0.1-0.2 s over them) does not land in a trial's timed steps.
    gc.freeze()
    try:
        study = run_study(config, experiment_path=args.experiment or default_experiment_path(), command=command,
                          track=not args.no_tracking, show_progress=not args.no_progress, workers=args.workers,
                          heartbeat=args.heartbeat, batch_trials=args.batch_trials,
                          on_change="fresh" if args.fresh else "extend" if args.extend else "refuse", face="cli",
                          register_model=args.register_model, gpus=args.gpus)  # checked there (session.RunOptions)
    except InputError as e:
        return _bad_input(e)
    except KeyboardInterrupt as e:
        from .interrupts import describe

        print(f"\ninterrupted ({describe(e)}): finished trials are kept; run the same command again to resume.",
              file=sys.stderr)
        return exit_status(e)
    except StudyGone as e:  # deleted under this process: nothing to resume
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrackingError, StoreError) as e:  # a store failed mid-study: one line, not a traceback
        print(f"error: {redact(str(e))}; finished trials are kept; run the same command again to resume",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    storage_url, tracking_uri = locations(config)
    print_closing(study, config, storage_url, None if args.no_tracking else tracking_uri)
    registered = study.user_attrs.get("registered_model")
    if args.register_model and registered:
        print(f"registered:     trial {registered['trial']}'s model as models:/{registered['name']}/"
              f"{registered['version']}")
    if args.goal:  # the report of this study answers for the same goal
        study.set_user_attr("goal", args.goal)
    if args.report:
        from .report import write_report

        try:
            folder = write_report(config.name, storage_url, tracking_uri, goal=args.goal)
        except InputError as e:  # the study is done and kept: only the report is missing
            return _bad_input(e)
        print(f"report:         {folder / 'report.html'}")
    print_recommendation(study, None if args.no_tracking else tracking_uri, args.goal)
    return 0


# -- sgdtune profile ------------------------------------------------------------------------

PROFILE_EPILOG = """examples:
  python -m sgdtune.profile                                  # experiments/batch_tradeoff.toml
  python -m sgdtune.profile experiments/mnist1d_cnn.toml --device cuda
  python -m sgdtune.profile experiments/quick.toml --threads 1 --budget 5

Times one update (forward, backward, optimizer step, as the trainer makes it) of the
experiment's model at B = 1, 2, 4, ... up to the search's largest B and at the study's own B
values, on its device and threads; caches the result in <mlruns>/profiles/ (a study does the
same before its first trial and reuses it).
"""


def profile_parser(prog: str = "python -m sgdtune.profile") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=PROFILE_EPILOG.replace("python -m sgdtune.profile", prog),
                                description="Time one update of an experiment's model at each batch size on this "
                                "device: seconds per update, examples/s, peak memory, the flat range.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", help="experiment TOML file (default: experiments/batch_tradeoff.toml)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--threads", type=_auto_or_int, metavar="auto|N", help="torch threads per update: auto = as "
                   "a trial at that B would use (default), N = always N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, VALUE in TOML syntax (e.g. model.hidden=[256]); repeatable")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time the profile may take; larger batch sizes are left out once it is spent (default: 10)")
    p.add_argument("--mlruns", default="mlruns", help="folder whose profiles/ holds the cache (default: mlruns)")
    p.add_argument("--no-cache", action="store_true", help="time again, and store nothing")
    return p


def profile_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune.profile") -> int:
    """Print the device profile of an experiment's model; 0 when printed, 2 on bad input."""
    args = profile_parser(prog).parse_args(argv)
    with ctrl_c_deferred():
        from .config import load_experiment, parse_overrides
    from .profile.cache import CACHE_FOLDER
    from .profile.measure import DEFAULT_BUDGET_S, profile_study

    budget = DEFAULT_BUDGET_S if args.budget is None else args.budget
    try:
        if not budget > 0:
            raise InputError("--budget", "must be > 0 (seconds)", repr(args.budget))
        config = load_experiment(args.experiment, device=args.device, threads=args.threads,
                                 **parse_overrides(args.set))
        from .data import load_data
        from .timing import resolve_device

        data = load_data(config.data, config.seed, resolve_device(config.device))
        cache = None if args.no_cache else Path(args.mlruns) / CACHE_FOLDER
        profile = profile_study(config, data, cache, budget_s=budget)
    except InputError as e:
        return _bad_input(e)
    print_profile(profile, config.name)
    return 0


PROFILE_COLUMNS = ("B", "threads", "ms/update", "IQR ms", "examples/s", "peak MiB")


def print_profile(profile: dict, name: str) -> None:
    """The profile as a table, one row per B that ran, then its sentences (profile.sentences)."""
    from rich.console import Console
    from rich.table import Table

    from .profile.words import sentences, table_rows

    cached = " (cached)" if profile["cached"] else ""
    table = Table(title=f"'{name}': one update of {profile['model']} on {profile['device']}",
                  caption=f"{profile['dtype']}, threads {profile['threads']}{cached}")
    for column in PROFILE_COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    flat, largest = profile["flat_up_to"], profile["largest_batch_size"]
    for row in table_rows(profile):
        b = int(row["B"])
        style = "bold" if b in (flat, largest) else None
        table.add_row(*(row[c] for c in PROFILE_COLUMNS), style=style)
    Console(width=shutil.get_terminal_size((120, 24)).columns).print(table)  # 120 into a file or a pipe
    for line in sentences(profile):
        print(line)
    print(f"flat range rule: {profile['flat_rule']}; median of the timed updates after "
          f"a warm-up, IQR their spread; budget {profile['budget_s']:g} s")


# -- sgdtune report -------------------------------------------------------------------------

REPORT_EPILOG = """examples:
  python -m sgdtune.report                          # the only study in mlruns/optuna.journal
  python -m sgdtune.report --study-name quick       # one of several studies
  python -m sgdtune.report --study-name q8 --out /tmp/reports
  python -m sgdtune.report --storage postgresql://user@host/db --tracking-uri http://host:5000

writes <out>/<study>/report.html (opens offline) and report.json (every number shown; what
varies between runs - timings, MLflow ids, dates - is under "volatile"), and logs both to
the study's parent MLflow run under report/.
"""


def report_parser(prog: str = "python -m sgdtune.report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=REPORT_EPILOG.replace("python -m sgdtune.report", prog),
                                description="Write a self-contained HTML report (and its JSON) for one study.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-name", help="study to report (default: the only study in the storage)")
    p.add_argument("--storage", help="Optuna storage: journal file or SQLAlchemy URL (default: mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    p.add_argument("--out", default="reports",
                   help="output folder; the report goes in <out>/<study>/ (default: reports)")
    _goal_flag(p)
    return p


def report_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune.report") -> int:
    """Write one study's report; 0 when written, 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = report_parser(prog).parse_args(argv)
    import optuna

    from .report import report_command, write_report
    from .store.tracking import quiet_logging

    quiet_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        folder = write_report(args.study_name, args.storage, args.tracking_uri, args.out,
                              command=report_command(argv, prog), goal=args.goal)
    except InputError as e:
        return _bad_input(e)
    print(f"wrote {folder / 'report.html'}")
    print(f"      {folder / 'report.json'}")
    return 0


# -- sgdtune ui -----------------------------------------------------------------------------

UI_EPILOG = """examples:
  python -m sgdtune.ui                         # MLflow UI on http://127.0.0.1:5000
  python -m sgdtune.ui --optuna                # and optuna-dashboard on http://127.0.0.1:8080
  python -m sgdtune.ui --port 5001 --tracking-uri sqlite:////abs/path/mlruns/mlflow.db
  python -m sgdtune.ui --host 10.0.0.5         # a private network too (no login: docs/scale-out.md, Security;
                                               # MLflow may then want --allowed-hosts: run mlflow server)

Ctrl-C stops the servers. Open the printed runs-table URL (MLflow 3 otherwise opens its GenAI
view); tick trials and press Compare to set their params and metrics side by side.
"""


def ui_parser(prog: str = "python -m sgdtune.ui") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=UI_EPILOG.replace("python -m sgdtune.ui", prog),
                                description="Serve the MLflow UI (and optuna-dashboard) on this store until Ctrl-C.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=5000, help="MLflow UI port (default: 5000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<abs>/mlruns/mlflow.db)")
    p.add_argument("--optuna", action="store_true", help="also serve optuna-dashboard on the Optuna storage")
    p.add_argument("--optuna-port", type=int, default=8080, help="optuna-dashboard port (default: 8080)")
    p.add_argument("--storage", help="Optuna storage for --optuna (default: mlruns/optuna.journal)")
    return p


def ui_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune.ui") -> int:
    """Serve the UIs until Ctrl-C; 2 on bad flags (nothing started), 1 when a server failed."""
    args = ui_parser(prog).parse_args(argv)
    from .hosts import warn_if_exposed
    from .ui import server as ui

    warn_if_exposed(args.host, args.port, "the MLflow UI" + (" (and optuna-dashboard)" if args.optuna else ""))

    try:
        tracking_uri, storage = ui.plan(args)
    except InputError as e:
        return _bad_input(e)
    return ui.serve(args, tracking_uri, storage)


# -- sgdtune surface ------------------------------------------------------------------------


def _int_in(name: str, lo: int, hi: int):
    """argparse type: an integer in lo..hi; errors name field, range and value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in {lo}..{hi}, got {text!r}")
        return value

    return parse


def _html_path(text: str) -> Path:
    if not text.lower().endswith((".html", ".htm")):
        raise argparse.ArgumentTypeError(f"out must be a file name ending in .html, got {text!r}")
    return Path(text)


def surface_parser(prog: str = "python -m sgdtune.surface") -> argparse.ArgumentParser:
    from .surface.explorer import DEFAULT_N, DEFAULT_SEED, N_MAX, N_MIN, SEED_MAX

    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Write a self-contained HTML page (no network access needed) that compares\n"
            "full-batch, mini-batch and pure SGD paths on the 2D least-squares loss\n"
            "surface of generated data, with live controls for B, lr, epochs and seed."
        ),
        epilog=(
            "examples:\n"
            "  python -m sgdtune.surface                      # writes surface.html\n"
            "  python -m sgdtune.surface --out /tmp/s.html --open\n"
            "  python -m sgdtune.surface --n 10000 --seed 7"
        ).replace("python -m sgdtune.surface", prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=_html_path, default=Path("surface.html"),
                        help="output HTML file (default: surface.html)")
    parser.add_argument("--open", action="store_true", help="open the page in the default web browser")
    parser.add_argument("--n", type=_int_in("n", N_MIN, N_MAX), default=DEFAULT_N,
                        help=f"number of examples, {N_MIN}..{N_MAX} (default: {DEFAULT_N})")
    parser.add_argument("--seed", type=_int_in("seed", 0, SEED_MAX), default=DEFAULT_SEED,
                        help=f"seed for the data and the shuffles, 0..{SEED_MAX} (default: {DEFAULT_SEED})")
    return parser


def surface_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune.surface") -> int:
    """Write the loss-surface explorer page."""
    import webbrowser

    from .surface.explorer import loss, lr_limit, make_data, optimum, write_page

    args = surface_parser(prog).parse_args(argv)
    data = make_data(args.n, args.seed)
    try:
        out = write_page(args.out, data)
    except InputError as e:
        return _bad_input(e)
    w_star = optimum(data)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): n={data.n}, seed={data.seed}, "
        f"w*=({w_star[0]:.4f}, {w_star[1]:.4f}), L(w*)={loss(data, w_star):.4f}, "
        f"stable full-batch lr < {lr_limit(data):.4f}"
    )
    if args.open:
        webbrowser.open(out.resolve().as_uri())
    return 0


# -- sgdtune storage-proxy -----------------------------------------------------------------

PROXY_EPILOG = """examples:
  python -m sgdtune storage-proxy --storage postgresql://USER:PASSWORD@DBHOST/optuna   # grpc://127.0.0.1:13000
  python -m sgdtune storage-proxy --storage sqlite:///mlruns/optuna.db --port 13001
  python -m sgdtune storage-proxy --storage postgresql://USER:PASSWORD@DBHOST/optuna --host 10.0.0.5  # private
  # then, on any machine that reaches it (no --heartbeat through the proxy):
  python -m sgdtune.study experiments/quick.toml --storage grpc://PROXYHOST:13000 --workers 4

Ctrl-C or SIGTERM stops it. The proxy has no TLS and no authentication: keep it on
loopback or a private network (pip install 'sgdtune[grpc]' for grpcio).
"""


def proxy_parser(prog: str = "python -m sgdtune storage-proxy") -> argparse.ArgumentParser:
    from .store.proxy import DEFAULT_HOST, DEFAULT_PORT

    p = argparse.ArgumentParser(prog=prog, epilog=PROXY_EPILOG,
                                description="Serve one Optuna RDB storage through Optuna's gRPC storage proxy, so "
                                "that many workers share its few database connections.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True, help="the RDB storage to serve: postgresql://... or sqlite:///FILE")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST}, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to bind (default: {DEFAULT_PORT})")
    return p


def proxy_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune storage-proxy") -> int:
    """Serve until Ctrl-C or SIGTERM; 0 when stopped, 2 on bad input (nothing served)."""
    args = proxy_parser(prog).parse_args(argv)
    from .hosts import warn_if_exposed
    from .store.proxy import serve

    warn_if_exposed(args.host, args.port, "the storage proxy")

    try:
        return serve(args.storage, args.host, args.port)
    except InputError as e:
        return _bad_input(e)


# -- sgdtune model -------------------------------------------------------------------------

MODEL_EPILOG = """examples:
  python -m sgdtune model --study-name quick                   # the best trial -> quick-trial-<n>.pt
  python -m sgdtune model --study-name quick --trial 3 --out t3.pt
  python -m sgdtune model --study-name q --storage postgresql://user@host/db --tracking-uri http://host:5000

Only the best `keep_models` trials of a study (an experiment-file key, default 3) keep their
trained network. The file holds its state_dict (tensors only: torch.load(weights_only=True)).
"""


def model_parser(prog: str = "python -m sgdtune model") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=MODEL_EPILOG,
                                description="Save the trained network of a study's trial (the best by default).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-name", help="the study (default: the only study in the storage)")
    p.add_argument("--trial", default="best", help="'best' (by the first objective) or a trial number (default: best)")
    p.add_argument("--out", help="file to write (default: <study>-trial-<n>.pt)")
    p.add_argument("--storage", help="Optuna storage: journal file or SQLAlchemy URL (default: mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs>/mlruns/mlflow.db)")
    return p


def model_main(argv: Sequence[str] | None = None, prog: str = "python -m sgdtune model") -> int:
    """Write one trial's trained network to a file; 0 when written, 2 on bad input."""
    args = model_parser(prog).parse_args(argv)
    trial: int | str = args.trial
    if trial != "best":
        if not trial.isdigit():
            return _bad_input(InputError("--trial", "must be 'best' or a trial number (an integer >= 0)", repr(trial)))
        trial = int(trial)
    import optuna

    from .names import check_name
    from .saved import save_model_file

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.study_name is not None:
            check_name(args.study_name, "--study-name")
        _, text = save_model_file(args.study_name, trial, args.out, storage=args.storage,
                                  tracking_uri=args.tracking_uri)
    except InputError as e:
        return _bad_input(e)
    print(text)
    return 0


# -- sgdtune cluster -------------------------------------------------------------------------

CLUSTER_EPILOG = """examples:
  sgdtune cluster slurm experiments/quick.toml --storage postgresql://sgd@db.internal/optuna \\
      --tracking-uri http://mlflow.internal:5000 --tasks 8 --out quick.sbatch      # then: sbatch quick.sbatch
  sgdtune cluster k8s experiments/quick.toml --storage postgresql://sgd@db/optuna \\
      --tracking-uri http://mlflow:5000 --tasks 8 --image registry.example/sgdtune:0.1 --out quick.yaml

Every task runs the same `sgdtune study` command and joins the study through the storage
(PostgreSQL with --heartbeat 60, or grpc:// through `sgdtune storage-proxy`). No password goes
into the file: SLURM tasks read ~/.pgpass or PGPASSWORD; Kubernetes pods a Secret.
"""


def cluster_parser(prog: str = "sgdtune cluster") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=CLUSTER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Render a SLURM job array or a Kubernetes indexed Job that runs one study "
                                "on many machines.")
    p.add_argument("engine", choices=("slurm", "k8s"), help="slurm: an sbatch script; k8s: a Job + ConfigMap manifest")
    p.add_argument("experiment", help="experiment TOML file (SLURM: at this path on the shared filesystem)")
    p.add_argument("--storage", required=True, help="shared Optuna storage: postgresql://user@host/db or grpc://host:port")
    p.add_argument("--tracking-uri", help="MLflow tracking server every task reaches (default: no tracking)")
    p.add_argument("--study-name", help="study name (default: the experiment's)")
    p.add_argument("--tasks", type=int, default=4, help="array tasks (processes) running at once (default: 4)")
    p.add_argument("--gpus-per-task", type=int, default=1, help="GPUs per task, one worker each; 0 = CPU (default: 1)")
    p.add_argument("--cpus-per-task", type=int, default=4, help="CPU cores per task (default: 4)")
    p.add_argument("--n-trials", type=int, help="finished trials the study runs to (default: the experiment's)")
    p.add_argument("--time", default="04:00:00", help="SLURM time limit per task (default: 04:00:00)")
    p.add_argument("--image", help="k8s: the container image with sgdtune installed (required for k8s)")
    p.add_argument("--secret", default="sgdtune-db", help="k8s: the Secret holding the database password")
    p.add_argument("--out", help="write the file here (default: print it)")
    return p


def cluster_main(argv: Sequence[str] | None = None, prog: str = "sgdtune cluster") -> int:
    """Print (or write) the rendered template; 0 when done, 2 on bad input."""
    args = cluster_parser(prog).parse_args(argv)
    from .config import load_experiment
    from .study.cluster import Job, kubernetes, slurm

    try:
        config = load_experiment(args.experiment)
        if args.engine == "k8s" and not args.image:
            raise InputError("--image", "is required for k8s (an image with sgdtune installed)", "none")
        job = Job(Path(args.experiment).resolve(), args.study_name or config.name, args.storage, args.tracking_uri,
                  tasks=args.tasks, gpus_per_task=args.gpus_per_task, n_trials=args.n_trials,
                  cpus_per_task=args.cpus_per_task, time_limit=args.time)
        text = slurm(job) if args.engine == "slurm" else kubernetes(job, args.image, args.secret)
        if args.out is None:
            print(text, end="")
            return 0
        from .files import atomic_write

        atomic_write(args.out, text, field="--out")  # whole or not at all (files.py)
    except InputError as e:
        return _bad_input(e)
    print(f"wrote {args.out}")
    return 0


# -- the `sgdtune` console script -----------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[..., int]]] = {
    "study": ("run (or resume) a study: sgdtune study experiments/quick.toml", study_main),
    "report": ("write reports/<study>/report.html and report.json", report_main),
    "surface": ("write the interactive loss-surface explorer page", surface_main),
    "ui": ("open the MLflow UI (and optuna-dashboard) on this store", ui_main),
    "storage-proxy": ("serve an Optuna RDB storage to many workers through gRPC", proxy_main),
    "model": ("save a trial's trained network (the best by default) to a file", model_main),
    "cluster": ("render a SLURM job array or Kubernetes indexed Job that runs one study", cluster_main),
    "profile": ("time one update at each batch size on this device: sgdtune profile X.toml", profile_main),
}


def main(argv: Sequence[str] | None = None) -> int:
    """`sgdtune COMMAND [options]`: runs one command's main."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sgdtune {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (text, _) in COMMANDS.items():
            print(f"  {name:14} {text}")
        print("\n`sgdtune COMMAND --help` explains each command's options.")
        return 0 if argv else EXIT_BAD_INPUT
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        return _bad_input(InputError("command", f"must be one of {', '.join(COMMANDS)}", repr(command)))
    return interruptible(lambda: COMMANDS[command][1](rest, prog=f"sgdtune {command}") or 0)


if __name__ == "__main__":
    sys.exit(main())
