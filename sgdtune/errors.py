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
