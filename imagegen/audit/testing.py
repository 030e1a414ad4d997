"""A stand-alone `audit` CLI for tests and the bench, with the same error handling as imagegen/cli.py
(ImagegenError -> `error: <message>` on stderr and its exit code). Run: python -m imagegen.audit.testing ..."""

from __future__ import annotations

import sys

import typer

from ..errors import ImagegenError
from .cli import audit_command


def main(argv: list[str] | None = None) -> int:
    app = typer.Typer(add_completion=False)
    app.command("audit")(audit_command)

    @app.callback()
    def _root() -> None:
        """imagegen (audit only)"""

    try:
        rc = app(argv if argv is not None else sys.argv[1:], standalone_mode=False)
        if isinstance(rc, int):
            return rc
    except ImagegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except typer.TyperException as exc:  # usage errors
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
