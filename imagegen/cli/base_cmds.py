"""Base image and environment commands: base build, base list, doctor."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import settings
from ..console import out
from ..errors import GateFailed, UserInputError
from ..units import format_size
from . import userpaths
from .app import app, base_app

BasesMatrixOpt = Annotated[Optional[Path], typer.Option(
    "--matrix", "-m", envvar=settings.MATRIX.name,
    help="Also use the bases a matrix file defines (default: ./matrix.yaml when it exists).",
    callback=userpaths.input_file)]


@base_app.command("list")
def base_list(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
    matrix: BasesMatrixOpt = None,
) -> None:
    """List base images: each role's ref, whether it is in the local engine, and its size."""
    from ..bases import all_bases, list_rows

    rows = list_rows(all_bases(matrix))
    if json_out:
        out.print(json.dumps(rows, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    t = Table("base", "role", "source", "ref", "present", "size")
    for r in rows:
        t.add_row(r["base"], r["role"], r["source"], r["ref"], "yes" if r["present"] else "no", format_size(r["size"]))
    out.print(t)


@base_app.command("build")
def base_build(
    name: Annotated[str, typer.Argument(help="A base from `imagegen base list` (e.g. bookworm).")],
    role: Annotated[Optional[str], typer.Option("--role", "-r", help="runtime, builder or dev (default: all).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild (or re-pull) even if the image is present.")] = False,
    matrix: BasesMatrixOpt = None,
) -> None:
    """Bootstrap (or pull by digest) a base's roles; print each role's ref, size and time."""
    from ..bases import all_bases, ensure_spec_role, local_image, role_names

    known = all_bases(matrix)
    if name not in known:
        raise UserInputError(f"unknown base {name!r}; known bases: {', '.join(sorted(known))}")
    spec = known[name]
    for r in role_names(spec, role):
        t0 = time.monotonic()
        ref = ensure_spec_role(name, spec, r, force=force)
        img = local_image(ref)
        out.print(f"{name}/{r}\t{ref}\t{format_size(img.attrs.get('Size') if img else None)}\t{time.monotonic() - t0:.0f}s",
                  markup=False, highlight=False)


@app.command("doctor")
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Skip the network checks (mirror).")] = False,
) -> None:
    """Check the engine, disk, GPU runtime, tools and pip CA setup; exit 1 if a required item fails."""
    from ..doctor import failed, print_checks, run_checks

    checks = run_checks(network=not offline)
    print_checks(checks, json_out)
    bad = failed(checks)
    if bad:
        raise GateFailed(f"doctor: required check(s) failed: {', '.join(c.name for c in bad)}")
