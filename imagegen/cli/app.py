"""The Typer app, the options commands share, cell selection, and main(): the one map from errors to
exit codes (ImagegenError -> its exit_code, usage errors -> 2, Ctrl-C -> 130, SIGTERM -> 143), one line on stderr."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__, settings, signals
from ..console import err, out
from ..errors import ImagegenError, UserInputError
from . import userpaths

app = typer.Typer(
    name="imagegen",
    help="Build, test, audit and publish a family of deep-learning framework images from one matrix.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MatrixOpt = Annotated[
    Path,
    typer.Option("--matrix", "-m", envvar=settings.MATRIX.name, help="The matrix file.", show_default=True,
                 callback=userpaths.input_file),
]
#: for commands that read the matrix only in some of their forms (audit --trace, verify's rebuild): the
#: file is checked when it is read, so `audit IMAGE` and `verify REF --key` work outside a checkout
LaterMatrixOpt = Annotated[
    Path,
    typer.Option("--matrix", "-m", envvar=settings.MATRIX.name, help="The matrix file (read only by the forms "
                 "that need it).", show_default=True, callback=userpaths.input_file_if_named),
]
VariantOpt = Annotated[
    Optional[list[str]],
    typer.Option("--variant", "-v", help="A short selector (gpu-cuda11.8-slim), a full tag "
                 "(paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim) or a glob (paddle:*-cpu-*). Repeatable."),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every active cell of the matrix.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


base_app = typer.Typer(help="Base images: bootstrap from Debian packages (mmdebstrap) or pin from a registry.",
                       no_args_is_help=True)
app.add_typer(base_app, name="base")
cache_app = typer.Typer(help="The host's content-addressed wheel cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def load_matrix(matrix: Path):
    """The matrix file, validated (UserInputError with file:line otherwise)."""
    from .. import matrix as matrix_mod

    return matrix_mod.load(matrix)


def select_cells(matrix: Path, variant: list[str] | None, all_: bool, *, need_one: bool = True):
    """(matrix, cells) for --variant/--all; without either, an error (or every active cell if not need_one)."""
    m = load_matrix(matrix)
    if not variant and not all_:
        if need_one:
            raise UserInputError("name a cell with --variant (see `imagegen list`) or use --all")
        return m, m.active
    return m, m.select(variant, all_cells=all_)


def _version_cb(value: bool) -> None:
    if value:
        out.print(f"imagegen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version_cb, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """imagegen: one matrix.yaml -> rendered Dockerfiles -> built, tested, audited, published images."""
    if ctx.invoked_subcommand != "doctor":  # a malformed IMAGEGEN_* setting: one line before any work
        settings.check_all()


def main() -> None:
    """Console-script entry point (`imagegen`, `python -m imagegen`); the commands are registered by
    importing the package (imagegen/cli/__init__.py)."""
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    try:
        with signals.interrupts_as_exceptions():  # a CI runner's SIGTERM: the same clean-up and report as Ctrl-C
            rv = app(standalone_mode=False, prog_name="imagegen")
    except ImagegenError as exc:
        err.print(f"error: {exc}", markup=False, style="red")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):  # raised outside typer's own handling
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: typer's public base class (typer >= 0.29)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"error: {message}", markup=False, style="red")
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:  # a file or device failed mid-run (disk full, permissions): one line, not a traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        err.print(f"error: {where}{exc.strerror or exc}", markup=False, style="red")
        sys.exit(1)
    if rv == 130 and signals.received() is not None:  # typer returns 130 for a KeyboardInterrupt, silently
        _interrupted()
    sys.exit(rv if isinstance(rv, int) else 0)


def _interrupted() -> None:
    """One line and the exit code for the interrupt that stopped the command: 143 for SIGTERM, else 130."""
    if signals.received() == signal.SIGTERM:
        err.print("error: terminated (SIGTERM)", style="red")
        sys.exit(signals.Terminated.exit_code)
    err.print("error: interrupted", style="red")
    sys.exit(130)
