"""The rich ``Console`` maskkit prints to: the terminal's width on a terminal, and a wide fixed one otherwise.

Off a terminal (output redirected to a log file, a pipe, a compare worker's log) rich assumes 80 columns and
folds every table wider than that, cell by cell, until the log is unreadable. A log has no width to fit, so
maskkit gives it :data:`LOG_WIDTH` columns there; ``COLUMNS`` in the environment still sets the width.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

LOG_WIDTH = 200  # columns of a console that is not a terminal: the widest tables (compare's summary) fit


def make_console(*, stderr: bool = False, force_terminal: bool | None = None) -> Console:
    """A console on stdout (``stderr``: on stderr), :data:`LOG_WIDTH` wide unless it is a terminal or
    ``COLUMNS`` is set."""
    stream = sys.stderr if stderr else sys.stdout
    interactive = force_terminal if force_terminal is not None else stream.isatty()
    width = None if interactive or os.environ.get("COLUMNS", "").isdigit() else LOG_WIDTH
    return Console(stderr=stderr, force_terminal=force_terminal, width=width)
