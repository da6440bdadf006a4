"""`python -m sgdtune.profile`: the command line of cli.py.

Layer: edge (an entry point; nothing imports it).
"""

import sys

from sgdtune.cli import interruptible, profile_main

# the flags are parsed before torch is imported (cli.profile_main).
sys.exit(interruptible(profile_main))
