"""``python -m maskkit`` (and so ``torchrun -m maskkit train ...``)."""

import sys

from maskkit.cli import main

sys.exit(main())
