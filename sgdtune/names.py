"""The rule for a study's name, which becomes a folder (reports/<name>/), a file name and an
MLflow experiment's name. Standard library only: the experiment schema (config.py) and the
report, which loads no torch, both check names with it.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import re

from .errors import InputError

# A study name becomes a folder (reports/<name>/) and an MLflow experiment name: one path
# component that stays inside its parent, on any file system.
NAME_RULE = ("must be 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
             "(it names a folder: no '/', '\\', '..' or control characters)")
_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")


def name_problem(name: object) -> bool:
    """True when `name` cannot be a study name (see NAME_RULE)."""
    return not isinstance(name, str) or _NAME.fullmatch(name) is None


def check_name(name: object, field: str = "--study-name") -> str:
    """`name` if it can be a study name (a folder under reports/), else InputError naming `field`."""
    if name_problem(name):
        raise InputError(field, NAME_RULE, repr(name))
    return name
