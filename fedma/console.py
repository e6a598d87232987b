"""The consoles fedma's commands print to.

On a terminal: colour, a live progress bar, lines fitted to the window. Anywhere else (a file,
a pipe, CI): plain lines that are never hard-wrapped, so a path or a field name in a log
stays on one line and can be grepped or copied; progress bars are left out.
"""

from __future__ import annotations

import sys

from rich.console import Console

# Wide enough that no line fedma prints is folded when the output is not a terminal.
PLAIN_WIDTH = 10_000


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=PLAIN_WIDTH, no_color=True,
                   highlight=False, emoji=False)
