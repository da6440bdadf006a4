"""`python -m sgdtune COMMAND`: the `sgdtune` console script (cli.main).

Layer: edge.
"""

import sys

from .cli import main

sys.exit(main())
