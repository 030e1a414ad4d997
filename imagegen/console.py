"""Two consoles: results on stdout, logs and progress on stderr. rich honours NO_COLOR."""

from __future__ import annotations

import os
import sys

from rich.console import Console

_no_color = bool(os.environ.get("NO_COLOR"))


def _width(stream) -> int | None:
    # Piped output is read by people and tools alike: don't squeeze tables to 80 columns.
    if stream.isatty():
        return None
    return int(os.environ.get("COLUMNS", "200"))


out = Console(file=sys.stdout, no_color=_no_color, soft_wrap=True, highlight=False, width=_width(sys.stdout))
err = Console(file=sys.stderr, no_color=_no_color, soft_wrap=True, highlight=False, width=_width(sys.stderr))


def log(message: str) -> None:
    """A progress/log line on stderr."""
    err.print(message, markup=False)


def warn(message: str) -> None:
    err.print(f"warning: {message}", style="yellow", markup=False)
