"""SIGTERM handled like Ctrl-C: what systemd, Kubernetes and `timeout` send to stop a study.

A process that calls `stop_on_sigterm` turns SIGTERM into `Terminated`, a KeyboardInterrupt,
so every path that ends a trial cleanly on Ctrl-C (its run ended, its Optuna state FAIL with
the reason "interrupted (SIGTERM)") serves SIGTERM too. Exit statuses, the shell's
convention of 128 + the signal's number: 130 after Ctrl-C (SIGINT), 143 after SIGTERM.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import EXIT_SIGINT, EXIT_SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGINT, where `stop_on_sigterm(also_sigint=True)`) arrived: stop as on Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_sigterm(also_sigint: bool = False) -> None:
    """From now on SIGTERM raises Terminated in the main thread, the first time only: a second
    signal (systemd sends one to each process of the group, a supervisor forwards another)
    must not break off the cleanup the first one started. `also_sigint`: SIGINT too (worker
    processes, whose cleanup a forwarded Ctrl-C must not cut short either)."""
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    if also_sigint:
        signal.signal(signal.SIGINT, handler)


@contextmanager
def signals_held(*signums: int) -> Iterator[None]:
    """Hold these signals back until the block ends (then a pending one is delivered as usual)."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signums))


@contextmanager
def signals_ignored_by_children(*signums: int) -> Iterator[None]:
    """Processes started in the block begin with these signals ignored (an ignored signal
    stays ignored across exec; a blocked one does not stay blocked under multiprocessing's
    spawn) until they install handlers of their own. Milliseconds: process starts only."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Held:
    """Ctrl-C and SIGTERM held back since `hold_interrupts`: the first that arrived, if any, and
    the handlers to put back."""

    signum: int | None = None
    previous: dict = field(default_factory=dict)  # signal number -> the handler before the hold

    def release(self) -> None:
        """End the hold: the handlers from before it are back (a second call does nothing). A
        held signal stays held until `deliver`."""
        previous, self.previous = self.previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)

    def deliver(self) -> None:
        """End the hold and act on the held signal now, as its handler would have
        (Terminated, KeyboardInterrupt)."""
        self.release()
        signum, self.signum = self.signum, None
        if signum is None:
            return
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)


def hold_interrupts() -> Held:
    """From now until `Held.release` or `Held.deliver`, Ctrl-C and SIGTERM are held, not raised,
    so that what runs meanwhile (a trial's end, written to MLflow and then told to Optuna) is
    never cut in half: an interrupt there would leave a trained trial FAIL without its reason,
    and one inside Optuna's own `tell` breaks Optuna (an UnboundLocalError in
    optuna.study._optimize._run_trial, which catches Exception there, not KeyboardInterrupt).
    Main thread only (elsewhere: a no-op, since signals reach the main thread alone)."""
    held = Held()
    if threading.current_thread() is not threading.main_thread():
        return held

    def hold(signum, frame):
        if held.signum is None:
            held.signum = signum

    held.previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    return held


@contextmanager
def interrupts_held() -> Iterator[Held]:
    """`hold_interrupts` for the block: the handlers are back when it ends, and the caller
    delivers the held signal (`Held.deliver`) where stopping is safe."""
    held = hold_interrupts()
    try:
        yield held
    finally:
        held.release()


def describe(interrupt: BaseException) -> str:
    """'SIGTERM' or 'Ctrl-C': what stopped the process."""
    if isinstance(interrupt, Terminated) and interrupt.signum == signal.SIGTERM:
        return "SIGTERM"
    return "Ctrl-C"


def exit_status(interrupt: BaseException) -> int:
    """143 after SIGTERM, 130 after Ctrl-C (SIGINT)."""
    return EXIT_SIGTERM if describe(interrupt) == "SIGTERM" else EXIT_SIGINT
