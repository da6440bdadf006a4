"""`python -m sgdtune.study`: the command line of cli.py.

Layer: edge (an entry point; nothing imports it).
"""

import sys

from sgdtune.cli import interruptible, study_main

# the flags are parsed before anything heavy is imported (`--help` stays quick), and
# MLflow's writer process starts before torch (cli.study_main).
sys.exit(interruptible(study_main))
