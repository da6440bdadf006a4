"""`python -m sgdtune.report`: the command line of cli.py."""

import sys

from sgdtune.cli import report_main

sys.exit(report_main())
