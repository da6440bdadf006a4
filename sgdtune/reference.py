"""The experiment reference, docs/experiment-reference.md, generated from the schemas.

Every key's type, default, allowed values and description come from the pydantic fields
(config.py, data.py, model.py, trainer/config.py), so a changed field changes the page;
tests/architecture/test_reference.py holds the committed page equal to this output.

    python -m sgdtune.reference                                   # prints the markdown
    python -m sgdtune.reference --out docs/experiment-reference.md

Layer: pages (pages and servers a person opens; docs/architecture.md).
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import OBJECTIVES, SEARCHABLE, ExperimentConfig, _allowed_keys
from .errors import EXIT_BAD_INPUT, InputError
from .splits import min_examples

# The study command's flags that set a key (cli.py, study_main); tests/architecture/test_reference.py
# checks that each flag and key exists.
FLAG_KEYS = {
    "--study-name": "name", "--seed": "seed", "--n-trials": "n_trials", "--timeout": "timeout_s",
    "--replicates": "replicates", "--device": "device", "--storage": "storage", "--tracking-uri": "tracking_uri",
    "--no-profile": "profile",
}
NO_DESCRIPTION = "(no description)"
UNSET = "unset"


# -- one field ------------------------------------------------------------------------------


def _members(annotation: Any) -> list[Any]:
    """The parts of a union (X | Y, Optional[X]), else [annotation]."""
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def type_name(annotation: Any) -> str:
    """A TOML reader's name for a field's type: 'integer or "auto"', 'array of integers'."""
    names = []
    for part in _members(annotation):
        if part is type(None):
            continue
        if get_origin(part) is Literal:
            values = get_args(part)
            kind = "string" if all(isinstance(v, str) for v in values) else "value"
            # a literal beside another type ("int | 'auto'") is one allowed word, shown as such
            names.append(kind if len(_members(annotation)) == 1 or len(values) > 1 else f'"{values[0]}"')
        elif get_origin(part) is tuple:
            item = get_args(part)[0]
            names.append(f"array of {type_name(item)}s")
        else:
            names.append({int: "integer", float: "number", bool: "boolean", str: "string", Path: "string (a path)"}.get(
                part, getattr(part, "__name__", str(part))))
    return " or ".join(dict.fromkeys(names))


def toml_value(value: Any) -> str:
    """A default as it would be written in the file; None as 'unset'."""
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def allowed(field: FieldInfo, checked: bool = False) -> str:
    """The rules pydantic holds for a field: literal values, bounds, lengths, a pattern; `checked`:
    a validator of its own checks more (its rule is in the description)."""
    rules = []
    members = [a for a in _members(field.annotation) if a is not type(None)]
    # a literal beside another type ('int | "auto"') is in the type's name already
    literals = [a for a in members if get_origin(a) is Literal] if len(members) == 1 else []
    for part in _members(field.annotation):
        if get_origin(part) is tuple and get_origin(get_args(part)[0]) is Literal:
            literals.append(get_args(part)[0])
    values = [v for lit in literals for v in get_args(lit)]
    if values:
        rules.append(" | ".join(toml_value(v) for v in values))
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    for meta in field.metadata:
        for name, symbol in symbols.items():
            if getattr(meta, name, None) is not None:
                rules.append(f"{symbol} {getattr(meta, name)}")
        unit = "character" if str in members else "item"
        if getattr(meta, "min_length", None) is not None:
            rules.append(f"at least {meta.min_length} {unit}{'s' if meta.min_length != 1 else ''}")
        if getattr(meta, "max_length", None) is not None:
            rules.append(f"at most {meta.max_length} {unit}s")
        if getattr(meta, "pattern", None):
            rules.append(f"matches `{meta.pattern}`")
    if checked or any(type(meta).__name__ == "AfterValidator" for meta in field.metadata):  # Annotated checks
        rules.append("as the meaning says")
    return ", ".join(rules) or "any"


def validated_fields(model: type[BaseModel]) -> set[str]:
    """Names of the fields a field_validator of `model` checks."""
    decorators = model.__pydantic_decorators__.field_validators.values()
    return {name for d in decorators for name in d.info.fields}


def _cell(text: str) -> str:
    """Text fit for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def field_row(key: str, model: type[BaseModel], name: str, note: str = "") -> str:
    """One table row: key, type, default, allowed values, description (+ note)."""
    field = model.model_fields[name]
    default = field.default_factory() if field.default_factory is not None else field.default
    description = (field.description or NO_DESCRIPTION) + note
    rules = allowed(field, name in validated_fields(model))
    return (f"| `{key}` | {type_name(field.annotation)} | `{toml_value(default)}` | {_cell(rules)} "
            f"| {_cell(description)} |")


TABLE_HEAD = "| key | type | default | allowed | meaning (units; what it works with) |\n|---|---|---|---|---|"


# -- sections -------------------------------------------------------------------------------


def _table_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('table', Model) for a field that is a TOML table, ('tables', Model) for dict[str, Model]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table", annotation
    if get_origin(annotation) is dict:
        value = get_args(annotation)[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return "tables", value
    return None


def _first_line(model: type[BaseModel]) -> str:
    """The docstring's first line, unless it only names the table ("[data] of ...")."""
    line = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    return "" if line.startswith("[") else line


def key_sections() -> list[str]:
    """One markdown table per TOML section, in the schema's order; the top level first."""
    fields = ExperimentConfig.model_fields
    top = [name for name in _allowed_keys("") if _table_model(fields[name].annotation) is None]
    flag_of = {key: flag for flag, key in FLAG_KEYS.items()}
    rows = [field_row(name, ExperimentConfig, name, f"; flag `{flag_of[name]}`" if name in flag_of else "")
            for name in sorted(top, key=list(fields).index)]
    out = ["### Top level", "", TABLE_HEAD, *rows, ""]
    for name, field in fields.items():
        kind = _table_model(field.annotation)
        if kind is None:
            continue
        shape, model = kind
        section = f"{name}.<key>" if shape == "tables" else name
        keys = _allowed_keys(name)  # [train] without model and seed, which live elsewhere
        out += [f"### [{section}]", ""]
        if _first_line(model):
            out += [_first_line(model), ""]
        out += [TABLE_HEAD, *(field_row(f"{section}.{k}", model, k)
                              for k in sorted(keys, key=list(model.model_fields).index)), ""]
        if shape == "tables":
            out += search_keys(name)
    return out


def search_keys(section: str) -> list[str]:
    """Which keys [search.<key>] may name, and where each one's rules come from."""
    train = ExperimentConfig.model_fields["train"].annotation
    lines = ["`<key>` is one of these (each searched value must also pass the rules of the `[train]` key of "
             "that name, and a searched key's `[train]` value is replaced by the trial's):", "",
             "| key | values | rules of `[train]` |", "|---|---|---|"]
    for key, kind in SEARCHABLE.items():
        values = "integers (whole numbers)" if kind is int else "numbers"
        lines.append(f"| `{section}.{key}` | {values} | {_cell(allowed(train.model_fields[key]))} |")
    return [*lines, ""]


def min_rows_table() -> list[str]:
    """min_examples for a few common fractions: the fewest data rows a file may have."""
    vals, tests = (0.2, 0.5, 0.6, 0.8, 0.9), (0.0, 0.2, 0.5)
    lines = ["| val_fraction | " + " | ".join(f"test_fraction = {t}" for t in tests) + " |",
             "|---|" + "---|" * len(tests)]
    for v in vals:
        lines.append(f"| {v} | " + " | ".join(str(min_examples(v, t)) for t in tests) + " |")
    return lines


# -- the page -------------------------------------------------------------------------------

INTRO = """\
# Experiment reference

<!-- Generated by `python -m sgdtune.reference --out docs/experiment-reference.md` from the
pydantic schemas (sgdtune/config.py, data.py, model.py, trainer/config.py): change a Field's
description there, then regenerate; tests/architecture/test_reference.py fails while the two differ. -->

An experiment is a TOML file (`experiments/*.toml`), read by `python -m sgdtune.study FILE`
and by `sgdtune.load_experiment(FILE, **overrides)`. A key left out takes its default (a few
are needed in some cases, as their rows say); a key not listed here is refused. A bad value
stops before anything is written, with one line naming the key, the rule and what was given,
and exit status 2:

```
error: experiments/x.toml: train.batch_size: must be >= 1; got 0
```

## Where a value comes from

Highest first:

1. `--set KEY=VALUE` on the command line (VALUE in TOML syntax: `0.5`, `"adam"`, `[64, 128]`;
   a bare word is a string), for any key below, dotted (`train.momentum=0.5`);
2. the study flags that set a key ({flags}); when a flag and a `--set` name the same key, the
   `--set` wins (cli.py gathers the flags first and the `--set` pairs after them);
3. the experiment file;
4. the defaults in the tables below.

From Python, `load_experiment(path, **overrides)` takes the same dotted keys as keyword
arguments (`**{{"train.momentum": 0.5}}`, `seed=3`); an override of `None` keeps the file's value.

Types are strict: a value must have its key's type as written. A string where a number or a
boolean belongs (`n_trials = "24"`, `standardize = "false"`) is refused, naming the key; an
integer where a float belongs is fine (`momentum = 0`). `--set` values are TOML, so
`--set n_trials=24` is a number and `--set 'n_trials="24"'` the refused string.

A key that the file searches (`[search.X]`) takes its value from the sampler in each trial.
Setting it directly, with `--set train.X=...` or the keyword `train.X`, is refused: change
`[search.X]` instead (in the file, or with `--set search.X.low=...`, `search.X.high=...`).

## Paths

- `data.path` written in an experiment file is relative to **the file's folder**:
  `path = "../data/wine.csv"` beside `experiments/wine.toml` reads `data/wine.csv`, whatever
  the working directory. `~` is expanded; an absolute path is used as written.
- `data.path` given with `--set data.path=...` (or as a keyword to `load_experiment`) is
  relative to **the working directory**, where the command is typed.
- A relative path from the file that names no file is reported with what was written and
  where it was looked for.
- The stores and outputs are not experiment paths: `storage`, `tracking_uri`, `mlruns/` and
  `reports/` are relative to the working directory.
- A factory (`model.factory`, `data.factory` = `"pkg.module:function"`) is imported from
  **the experiment file's folder**, then **the working directory**, then `sys.path`
  (`PYTHONPATH`): both folders are put on the import path when the experiment is read, the
  same for `sgdtune study`, `python -m sgdtune.study` and `load_experiment`. A kept model
  records the folder its factory came from (`import_root` in `architecture.json`), so
  `sgdtune model` and `load_model` rebuild it from any working directory while that folder
  exists; otherwise they say which folder to put on `PYTHONPATH`.

## Features, targets and splits

- Features are standardized, (x - mean) / std with the **training split's** mean and std
  (validation and test use the same statistics; a constant feature stays 0). This is the
  default for every dataset except `linear`, whose known answer holds for the features as
  drawn; `data.standardize = true | false` overrides it.
- Regression targets (`data.task = "regression"`) are **never** standardized: they are
  float32 values as given. Classification labels are mapped to 0..k-1 in sorted order.
- Splits are seeded by the study seed: first a test set of ceil(test_fraction x n) examples
  (when `data.test_fraction > 0`), then ceil(val_fraction x m) of the m left for validation,
  the rest for training; stratified by class for classification when every class has at
  least 2 examples, a plain random split for regression.

## What a data file must hold

`dataset = "csv"`: a header row, then one row per example; the column `label` (`data.label`)
is the target, every other column a feature; every cell a finite number (the first that is
not is named by its line and column). `dataset = "npz"`: the array `label` and either one
2-D feature array or 1-D feature columns, finite numbers. Classification needs at least 2
classes in the label column. The fewest data rows that every split can use (min_examples in
sgdtune/splits.py):

{min_rows}

## Keys

Types and values are those of TOML; `unset` means the key has no value unless given.
"""


def render() -> str:
    """The whole reference page, as markdown."""
    flags = ", ".join(f"`{flag}` → `{key}`" for flag, key in FLAG_KEYS.items())
    intro = INTRO.format(flags=flags, min_rows="\n".join(min_rows_table()))
    objectives = ", ".join(f"`{name}` ({direction})" for name, direction in OBJECTIVES.items())
    lines = [intro, *key_sections(), f"Objectives and their directions: {objectives}.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference, or write it to --out; 2 when the file cannot be written."""
    parser = argparse.ArgumentParser(prog="python -m sgdtune.reference",
                                     description="Print the experiment reference (markdown), generated from the "
                                     "schemas; --out writes it to a file.")
    parser.add_argument("--out", type=Path, help="write here (e.g. docs/experiment-reference.md) instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from .files import atomic_write

    try:
        atomic_write(args.out, text, field="--out")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
