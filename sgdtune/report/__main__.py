"""`python -m sgdtune.report`."""

import sys

from .write import main

sys.exit(main())
