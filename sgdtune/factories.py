"""A user's Python function named in an experiment, "pkg.module:function" (model.factory,
data.factory), and the one rule for where it is imported from.

The rule, the same for `sgdtune study`, `python -m sgdtune.study` and the Python API: the
experiment file's folder and the working directory are put on the import path (sys.path)
when the experiment is read (config.load_experiment). `python -m` puts the working directory
there by itself and a console script does not; without the rule, one command found a factory
that the other could not.

A kept network records the folder its model factory was imported from (`import_root`, in
architecture.json: saved.py), so that it can be rebuilt from any working directory.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator


def on_import_path(folders: Iterable[str | Path]) -> None:
    """Put each folder (made absolute) at the front of sys.path unless it is there already."""
    for folder in reversed([str(Path(f).resolve()) for f in folders]):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def experiment_import_path(experiment: str | Path | None) -> list[Path]:
    """The folders the rule puts on the import path: the experiment file's folder (when there
    is a file), then the working directory."""
    folders = [Path(experiment).resolve().parent] if experiment is not None else []
    return [*folders, Path.cwd()]


def resolve_factory(spec: str) -> Callable:
    """Import "pkg.module:function"; ValueError naming what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f'must look like "pkg.module:function"; got {spec!r}')
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} ({e}); it is looked for in the experiment file's "
                         "folder, the working directory and sys.path (PYTHONPATH)") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module {module_name!r} has no callable {attr!r}")
    return fn


def import_root(spec: str) -> str | None:
    """The folder that `spec`'s top-level package (or module) was imported from: the entry of
    sys.path that finds it again; None for a module that has no file (a builtin)."""
    module_name = spec.partition(":")[0]
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    depth = module_name.count(".") + (2 if path.name == "__init__.py" else 1)
    return str(path.parents[depth - 1])


def importable(factory: str | None) -> str | None:
    """A schema's check of a "pkg.module:function" field (data.factory, model.factory): it imports."""
    if factory is not None:
        resolve_factory(factory)
    return factory


# The type of a factory field: checked on validation, so a bad one is an InputError naming it.
ImportableFactory = Annotated[str | None, AfterValidator(importable)]
