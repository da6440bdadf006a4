"""Every error type sgdtune raises, and the exit statuses of its commands.

Bad user input has one type, InputError, and one sentence shape: every message reads
`<field>: <rule>; got <what was given>`: the field (a key of the experiment file, a flag, a
data cell), the rule with the allowed values, and the value received. The CLI prints it on
one line and exits with status 2 (cli.py); the Python API raises it as a ValueError. The
other errors are failures of a store or a process during a study, each said in one line.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

# Exit statuses: the shell's convention of 128 + the signal's number after an interrupt.
EXIT_BAD_INPUT = 2  # an InputError; also a store that failed to write, or a study deleted under the process
EXIT_STORE_FAILED = EXIT_BAD_INPUT  # a worker's Optuna or MLflow store failed to write: the study stops
EXIT_SIGINT = 130  # 128 + SIGINT: Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM: systemd, Kubernetes, `timeout`
EXIT_INTERRUPTED = EXIT_SIGINT


class InputError(ValueError):
    """Bad user input: `field`, the `rule` it breaks, and what was given (`got`, as it
    should be shown: pass repr(value) for a value, or None when there is nothing to show)."""

    def __init__(self, field: str, rule: str, got: str | None = None):
        self.field, self.rule, self.got = field, rule, got
        super().__init__(f"{field}: {rule}" + (f"; got {got}" if got is not None else ""))


class StudyGone(RuntimeError):
    """The study was deleted from the Optuna storage (or replaced by a new one of the same
    name) while this process ran it: another process ran it with `--fresh` from where it
    could not see this one (another host), or someone deleted it. The process stops; its
    runs are ended. The CLI prints it on one line and exits with EXIT_BAD_INPUT."""

    def __init__(self, study_name: str):
        super().__init__(f"study {study_name!r} was deleted from the Optuna storage while this process ran it "
                         "(started again elsewhere with --fresh, or deleted); this process stops, its MLflow runs "
                         "ended; its finished trials went with the study")


class StoreError(RuntimeError):
    """The Optuna storage failed to write (OSError such as ENOSPC or EFBIG, or Optuna's
    StorageInternalError around one): reclaim.as_store_error."""


class TrackingError(RuntimeError):
    """A write to MLflow failed in the writer process (or the process died). A store that
    cannot be opened at all (a wrong path, an unreachable server) is bad input instead: an
    InputError naming --tracking-uri."""


class WriterGone(TrackingError):
    """The writer process died (killed, out of memory): raised once, then the tracker makes
    the ends of its runs directly (store/writer.py, its opening docstring)."""


class Surplus(Exception):
    """A trial that started once the study already had n_trials finished or running trials
    with lower numbers (two processes asked at once): failed before drawing anything, with
    fail_kind "surplus", and the process stops; it does not count as finished."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite at update `update` (1-based), or (`bound`
    given) exceeded `bound`, 1e6 x the first loss (trainer/loop.py); a trial's own ending, not a bug."""

    def __init__(self, update: int, epoch: int, value: float, bound: float | None = None):
        above = "" if bound is None else f", above the divergence bound {bound:.3g} (1e6 x the first loss)"
        super().__init__(f"training loss became {value:.3g} at update {update} (epoch {epoch}){above}")
        self.update, self.epoch, self.value, self.bound = update, epoch, value, bound


class UnstackableModel(ValueError):
    """The model keeps state outside its parameters (buffers, dropout): train it one by one."""
