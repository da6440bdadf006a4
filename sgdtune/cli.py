"""The `sgdtune` console script: `sgdtune study|report|surface|ui ...` runs each module's main."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

COMMANDS = {
    "study": "run (or resume) a study: sgdtune study experiments/quick.toml",
    "report": "write reports/<study>/report.html and report.json",
    "surface": "write the interactive loss-surface explorer page",
    "ui": "open the MLflow UI (and optuna-dashboard) on this store",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sgdtune {" + ",".join(COMMANDS) + "} [options]\n")
        for name, text in COMMANDS.items():
            print(f"  {name:8} {text}")
        print("\n`sgdtune COMMAND --help` explains each command's options.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: command: must be one of {', '.join(COMMANDS)}; got {command!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"sgdtune.{command}")
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
