"""`python -m sgdtune.ui`: the command line of cli.py.

Layer: edge (an entry point; nothing imports it).
"""

import sys

from sgdtune.cli import interruptible, ui_main

# the flags are parsed before MLflow is imported (cli.ui_main).
sys.exit(interruptible(ui_main))
