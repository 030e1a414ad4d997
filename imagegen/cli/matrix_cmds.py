"""Matrix commands: validate, list, schema, render."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..console import err, out
from ..errors import ImagegenError, UserInputError
from . import userpaths
from .app import AllOpt, JsonOpt, MatrixOpt, VariantOpt, app, load_matrix


@app.command()
def validate(matrix: MatrixOpt = Path("matrix.yaml"), json_out: JsonOpt = False) -> None:
    """Check the matrix against imagegen's compatibility data; exit 2 with the reason if it is invalid."""
    from .. import gpu_archs

    try:
        m = load_matrix(matrix)
        notes = gpu_archs.check_matrix(m)
    except UserInputError as exc:
        if json_out:
            out.print_json(data={"valid": False, "error": str(exc)})
        raise
    for note in notes:
        err.print(f"note: {note}", markup=False, highlight=False)
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
    from ..units import format_size

    m = load_matrix(matrix)
    cells = m.select(variant) if variant else (m.cells if explain else m.active)
    if json_out:
        from .. import gpu_archs

        out.print_json(data=[{**c.as_dict(), "cuda_kernels": gpu_archs.cell_summary(m, c)} for c in cells])
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
    of: Annotated[str, typer.Option("--of", help="Which document: matrix (matrix.yaml, for editor completion), "
                                    "audit (audit --json), publish-report, scan-report, kernel-facts, test-record, "
                                    "build-record.")] = "matrix",
) -> None:
    """The JSON Schema of matrix.yaml (default) or of a document imagegen writes (committed in schemas/)."""
    from ..schemas import schema as schema_of

    text = json.dumps(schema_of(of), indent=2, sort_keys=True) + "\n"
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
    from .. import render as render_mod

    m = load_matrix(matrix)
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
