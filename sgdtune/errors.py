"""The one error type for bad user input, and its one sentence shape.

Every message reads `<field>: <rule>; got <what was given>`: the field (a key of the
experiment file, a flag, a data cell), the rule with the allowed values, and the value
received. The CLI prints it on one line and exits with status 2 (cli.py); the Python API
raises it as a ValueError.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2  # the CLI's exit status for an InputError


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
