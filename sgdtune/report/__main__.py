"""`python -m sgdtune.report`: the command line of cli.py.

Layer: edge (an entry point; nothing imports it).
"""

import sys

from sgdtune.cli import interruptible, report_main

sys.exit(interruptible(report_main))
