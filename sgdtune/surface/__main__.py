"""`python -m sgdtune.surface`: the command line of cli.py.

Layer: edge (an entry point; nothing imports it).
"""

import sys

from sgdtune.cli import interruptible, surface_main

# the flags are parsed before torch is imported (cli.surface_main).
sys.exit(interruptible(surface_main))
