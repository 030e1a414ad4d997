"""Error types. Every error a user can cause is an ImagegenError: the CLI prints
its message as one line on stderr and exits with its code, never a traceback."""

from __future__ import annotations


class ImagegenError(Exception):
    """A failure with a message fit for the user. exit_code 1 = run-time failure."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, always
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split("\n"))


class UserInputError(ImagegenError):
    """Bad input: matrix, selector, option. Exit code 2, nothing written."""

    exit_code = 2


class EngineError(ImagegenError):
    """The Docker engine is unreachable or refused an operation."""

    exit_code = 3


class GateFailed(ImagegenError):
    """A check or gate (size budget, audit limit, test) failed."""

    exit_code = 1
