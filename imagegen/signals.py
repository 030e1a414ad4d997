"""Ctrl-C and SIGTERM as exceptions, and which one came.

CI runners stop a cancelled or timed-out job with SIGTERM (GitHub Actions: SIGINT, then SIGTERM
after 7.5 s, then SIGKILL; GitLab and Kubernetes: SIGTERM, then SIGKILL after a grace period).
Python's default for SIGTERM ends the process at once, with no `finally` run: no report written, no
temporary tag removed. Within `interrupts_as_exceptions` (or `sigterm_as_interrupt`, SIGTERM only),
SIGTERM raises `Terminated`, a KeyboardInterrupt, so every clean-up that handles Ctrl-C also runs for
it; the CLI exits 143 (128 + SIGTERM) for it and 130 for Ctrl-C.

`received()` says which signal raised the last interrupt: typer turns a KeyboardInterrupt into a
silent return of 130 (typer.core `_main`: `raise Exit(130)`), so the CLI cannot tell from it alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (inside `sigterm_as_interrupt`). `exit_code`: 143."""

    exit_code = 128 + signal.SIGTERM


def interrupt_exit_code(exc: BaseException) -> int:
    """The exit code for an interrupt: 143 for SIGTERM (`Terminated`), else 130 (Ctrl-C)."""
    return getattr(exc, "exit_code", 130) if isinstance(exc, KeyboardInterrupt) else 1


def received() -> int | None:
    """The signal number (SIGINT, SIGTERM) that raised the last interrupt in this process, or None."""
    return _received[-1] if _received else None


def _raise(signum, frame):
    _received.append(signum)
    if signum == signal.SIGTERM:
        raise Terminated(f"signal {signum}")
    raise KeyboardInterrupt


@contextlib.contextmanager
def _handling(signums: tuple[int, ...]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def sigterm_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread; the previous handler is put
    back after it. Outside the main thread (where signal handlers cannot be set) it does nothing."""
    return _handling((signal.SIGTERM,))


def interrupts_as_exceptions() -> contextlib.AbstractContextManager[None]:
    """`sigterm_as_interrupt`, and Ctrl-C (SIGINT) raises KeyboardInterrupt as Python's default does,
    both recorded for `received()`."""
    return _handling((signal.SIGINT, signal.SIGTERM))
