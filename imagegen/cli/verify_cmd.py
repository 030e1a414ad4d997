"""verify: rebuild an image from the inputs its labels name and compare (imagegen.verify)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import err, out
from . import userpaths
from .app import JsonOpt, LaterMatrixOpt, app, load_matrix


@app.command("verify")
def verify_command(
    ref: Annotated[str, typer.Argument(help="A local image imagegen built (tag or ID); with --key, an image "
                                            "in its registry (HOST/REPO:TAG or @DIGEST).")],
    matrix: LaterMatrixOpt = Path("matrix.yaml"),
    builder: Annotated[Optional[str], typer.Option("--builder", help="The buildx builder for the rebuild "
                                                   "(default: as `imagegen build` chooses).")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the rebuilt image (untagged) for inspection.")] = False,
    against: Annotated[Optional[str], typer.Option("--against", help="Compare with this image instead of "
                                                   "rebuilding (a kept rebuild, or a build from another "
                                                   "machine).")] = None,
    allow_dirty: Annotated[bool, typer.Option("--allow-dirty", help="Rebuild an image built from uncommitted "
                                              "changes from this working tree (same commit): the answer is "
                                              "then about this working tree only.")] = False,
    key: Annotated[Optional[Path], typer.Option("--key", help="Check REF's signatures in its registry against "
                                                "this PEM public key instead of rebuilding; exit 1 when none "
                                                "verifies, or there is none.", callback=userpaths.input_file)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild REF's cell cold from this checkout and compare: exit 0 when the rebuild is the same image
    (same config digest), 1 when it differs (the first differing file named) or cannot be rebuilt here."""
    from .. import verify as verify_mod
    from ..console import log

    if key is not None:
        sv = verify_mod.verify_signed(ref, key)
        if json_out:
            out.print_json(json.dumps({**vars(sv), "ok": sv.ok}))
        else:
            good = sum(1 for s in sv.signatures if s["ok"])
            out.print(f"{sv.ref}@{sv.digest}: {good} of {len(sv.signatures)} signature(s) verify with {key}; "
                      f"attestations: {', '.join(a['kind'] for a in sv.attestations) or 'none'}", markup=False)
        if not sv.ok:
            err.print(f"error: {sv.ref}: {sv.reason}", markup=False, style="red")
            raise typer.Exit(1)
        return
    if against:
        v = verify_mod.compare_images(ref, against)
    else:
        m = load_matrix(matrix)
        from .. import pipeline

        v = verify_mod.verify(m, ref, pipeline.rebuild, builder=builder, keep=keep, allow_dirty=allow_dirty,
                              announce=log)
    if json_out:
        out.print_json(json.dumps({**vars(v), "ok": v.ok}))
    else:
        out.print(f"{v.ref}: {v.status} ({v.cell}, {v.seconds:.0f}s)", markup=False)
        out.print(f"  image   config {v.image_config_digest}", markup=False)
        if v.rebuilt_config_digest:
            other = "against" if against else "rebuilt"
            out.print(f"  {other} config {v.rebuilt_config_digest}" + (f" ({against})" if against else ""),
                      markup=False)
        if v.rebuilt_image:
            out.print(f"  rebuilt image  {v.rebuilt_image} (kept)", markup=False)
        for f in (v.diff.get("files") or [])[:10]:
            out.print(f"  layer {f['layer']}: {f['path']}: {f['what']} {f['a']} != {f['b']}", markup=False)
    if not v.ok:
        err.print(f"error: {v.ref} {v.status}: {v.reason}", markup=False, style="red")
        raise typer.Exit(1)
