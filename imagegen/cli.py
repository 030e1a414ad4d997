"""The imagegen command line. The only place that turns errors into exit codes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import __version__, userpaths
from .console import err, out
from .errors import ImagegenError, UserInputError

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
    typer.Option("--matrix", "-m", envvar="IMAGEGEN_MATRIX", help="The matrix file.", show_default=True,
                 callback=userpaths.input_file),
]
VariantOpt = Annotated[
    Optional[list[str]],
    typer.Option("--variant", "-v", help="A short selector (gpu-cuda11.8-slim), a full tag "
                 "(paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim) or a glob (paddle:*-cpu-*). Repeatable."),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every active cell of the matrix.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _load(matrix: Path):
    from . import matrix as matrix_mod

    return matrix_mod.load(matrix)


def _cells(matrix: Path, variant: list[str] | None, all_: bool, *, need_one: bool = True):
    m = _load(matrix)
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
    version: Annotated[bool, typer.Option("--version", callback=_version_cb, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """imagegen: one matrix.yaml -> rendered Dockerfiles -> built, tested, audited, published images."""


# --- matrix stage ----------------------------------------------------------------------------


@app.command()
def validate(matrix: MatrixOpt = Path("matrix.yaml"), json_out: JsonOpt = False) -> None:
    """Check the matrix against imagegen's compatibility data; exit 2 with the reason if it is invalid."""
    try:
        m = _load(matrix)
    except UserInputError as exc:
        if json_out:
            out.print_json(data={"valid": False, "error": str(exc)})
        raise
    if json_out:
        out.print_json(data={"valid": True, "matrix": str(matrix), "cells": len(m.active),
                             "excluded": len(m.excluded)})
    else:
        out.print(f"{matrix}: valid, {len(m.active)} cells ({len(m.excluded)} excluded)")


@app.command("list")
def list_cells(
    matrix: MatrixOpt = Path("matrix.yaml"),
    explain: Annotated[bool, typer.Option("--explain", help="Also show excluded cells and why, and where each "
                                                           "cell comes from.")] = False,
    variant: VariantOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every cell the matrix expands to: selector, full tag, axes and size budget."""
    from .matrix import format_size

    m = _load(matrix)
    cells = m.select(variant) if variant else (m.cells if explain else m.active)
    if json_out:
        out.print_json(data=[c.as_dict() for c in cells])
        return
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("selector", "tag", "python", "base", "budget"):
        table.add_column(col)
    if explain:
        table.add_column("status / origin")
    for c in cells:
        row = [c.selector, c.ref, c.python, c.base,
               format_size(c.budget_size) + (f" / {format_size(c.budget_compressed)} gz" if c.budget_compressed else "")]
        if explain:
            row.append(f"excluded: {c.excluded}" if c.excluded else f"active ({c.origin})")
        table.add_row(*row)
    out.print(table)


@app.command()
def schema(
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file instead of stdout.",
                                                     callback=userpaths.output_file)] = None,
) -> None:
    """The JSON Schema of matrix.yaml, for editor completion (yaml-language-server)."""
    from .matrix import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text)
        err.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


@app.command()
def render(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write one folder per cell here "
                                                    "(default: print the Dockerfile).",
                                                    callback=userpaths.output_dir)] = None,
    check: Annotated[bool, typer.Option("--check", help="Fail if the files under --out (default dockerfiles/) "
                                                       "drifted from the templates.")] = False,
) -> None:
    """Render the multi-stage Dockerfile of each selected cell."""
    from . import render as render_mod

    m = _load(matrix)
    cells = m.select(variant, all_cells=all_ or check and not variant) if (variant or all_ or check) else None
    if cells is None:
        if out_dir is None:
            raise UserInputError("name a cell with --variant, or use --all with --out DIR")
        cells = m.active
    rendered = [render_mod.render_cell(m, c) for c in cells]
    if check:
        target = out_dir or (m.path.resolve().parent / "dockerfiles")
        problems = render_mod.check(rendered, target, all_cells=not variant)
        if problems:
            for p in problems:
                out.print(p, markup=False)
            raise ImagegenError(f"{len(problems)} rendered file(s) drifted from the templates; run "
                                f"`imagegen render --all --out {target}` and commit")
        out.print(f"{target}: {len(rendered)} cells up to date")
        return
    if out_dir is None:
        for r in rendered:
            sys.stdout.write(r.files["Dockerfile"])
        return
    written = render_mod.write(rendered, out_dir)
    for r in rendered:
        out.print(str(out_dir / r.cell.id), markup=False)
    err.print(f"rendered {len(rendered)} cell(s), {len(written)} file(s)")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    _register_optional()
    try:
        rv = app(standalone_mode=False, prog_name="imagegen")
    except ImagegenError as exc:
        err.print(f"error: {exc}", markup=False, style="red")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("error: interrupted", style="red")
        sys.exit(130)
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
    sys.exit(rv if isinstance(rv, int) else 0)


def _register_optional() -> None:
    """Stage commands implemented in their own modules."""
    from . import commands  # noqa: F401  (registers build/test/lock/audit/... on `app`)
