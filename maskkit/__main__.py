"""``python -m maskkit`` (and so ``torchrun -m maskkit train ...``)."""

from maskkit.cli import run

run()
