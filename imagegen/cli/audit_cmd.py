"""`imagegen audit`: where every byte of an image goes (imagegen.audit), gates for CI, and the
file-access trace (--trace VARIANT runs the cell's smoke test; --trace-image IMAGE -- CMD...).

User errors raise imagegen.errors exceptions; a gate breach prints its reasons on stderr and exits 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..console import err, out
from ..errors import GateFailed, UserInputError
from ..units import parse_size
from . import userpaths
from .app import LaterMatrixOpt, app, load_matrix

if TYPE_CHECKING:
    from ..audit.schema import AuditReport


def _trace_variant(matrix: Path, selector: str) -> tuple[str, list[str]]:
    """--trace VARIANT: the cell's built image and its CPU smoke inference, run by the image's Python."""
    from .. import testrun

    cells = load_matrix(matrix).select([selector])  # raises with candidates when nothing matches
    if len(cells) != 1:
        raise UserInputError(f"--trace takes one cell; '{selector}' matches {', '.join(c.ref for c in cells)}")
    (cell,) = cells
    built, _ = testrun.split_built([cell])
    if not built:
        raise UserInputError(f"{cell.ref} is not built here; run `imagegen build --variant {cell.ref}` first")
    return cell.local_ref, testrun.smoke_argv(cell, device="cpu")


def _parse_max(items: list[str]) -> dict[str, int]:
    from ..audit.categories import all_names

    known = set(all_names())
    out_: dict[str, int] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise UserInputError(f"--max needs CATEGORY=BYTES, got {item!r}")
        if name not in known:
            raise UserInputError(f"unknown category {name!r} in --max; known: {', '.join(sorted(known))}")
        out_[name] = parse_size(value, what=f"--max {name}")
    return out_


def _log(msg: str) -> None:
    if err.is_terminal:
        err.print(msg, markup=False, style="dim")


@app.command("audit")
def audit_command(
    image: Annotated[Optional[str], typer.Argument(help="A local image (name:tag or id); with --attestations, an image in its registry (HOST/REPO:TAG). With --trace-image: the "
                                                   "command to run, after `--`.")] = None,
    command: Annotated[Optional[list[str]], typer.Argument(help="With --trace-image: the command's arguments.",
                                                           show_default=False)] = None,
    compare_with: Annotated[Optional[str], typer.Option("--compare", metavar="IMAGE_B",
                                                        help="Show IMAGE and IMAGE_B side by side, with the difference.")] = None,
    from_tar: Annotated[Optional[Path], typer.Option("--from-tar", metavar="FILE", callback=userpaths.input_file,
                                                     help="Audit a `docker save` tarball instead of a local image.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    html: Annotated[Optional[Path], typer.Option("--html", metavar="FILE", callback=userpaths.output_file,
                                                help="Write a self-contained HTML page (treemap + tables).")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows in top-N tables.")] = 20,
    compressed: Annotated[bool, typer.Option("--compressed/--no-compressed",
                                             help="Compute each layer's gzip size (cached by diff_id).")] = True,
    max_size: Annotated[Optional[str], typer.Option("--max-size", metavar="BYTES",
                                                    help="Gate: image size limit, e.g. 4.5GB.")] = None,
    max_wasted: Annotated[Optional[str], typer.Option("--max-wasted", metavar="BYTES",
                                                      help="Gate: hidden-by-later-layers + duplicate bytes limit.")] = None,
    max_cat: Annotated[Optional[list[str]], typer.Option("--max", metavar="CATEGORY=BYTES",
                                                         help="Gate: a category or group limit (repeatable), "
                                                              "e.g. --max docs=50MB --max cuda=3GB.")] = None,
    trace_variant: Annotated[Optional[str], typer.Option("--trace", metavar="VARIANT",
                                                         help="Trace the cell's smoke test (needs the matrix).")] = None,
    trace_image: Annotated[Optional[str], typer.Option("--trace-image", metavar="IMAGE",
                                                       help="Trace `-- CMD...` run in IMAGE; report bytes never opened.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Trace: seconds before the workload is killed.")] = 600,
    attestations: Annotated[bool, typer.Option("--attestations", help="List the SBOM and provenance attached to "
                                               "IMAGE in its registry (host/repo:tag); exit 1 when there are "
                                               "none.")] = False,
    matrix: LaterMatrixOpt = Path("matrix.yaml"),
) -> None:
    """Where every byte of an image goes: layers, categories, packages, waste, suggestions."""
    from ..audit import audit
    from ..audit.report import check_gates
    from ..units import format_size as human

    gates_size = parse_size(max_size, what="--max-size") if max_size is not None else None
    gates_wasted = parse_size(max_wasted, what="--max-wasted") if max_wasted is not None else None
    gates_cat = _parse_max(max_cat or [])

    if trace_variant or trace_image:
        _trace(matrix, trace_variant, trace_image, ([image] if image else []) + list(command or []),
               timeout=timeout, top=top, json_out=json_out)
        return

    if attestations:
        _attestations(image or "", json_out)
        return
    if not image and not from_tar:
        raise UserInputError("name an image to audit (or --from-tar FILE)")
    if image and from_tar:
        raise UserInputError("give either an image or --from-tar FILE, not both")
    if command:
        raise UserInputError(f"unexpected arguments: {' '.join(command)}")

    a = audit(image, tarball=str(from_tar) if from_tar else None, compressed=compressed, top=top, log=_log)
    report = a.report
    b = audit(compare_with, compressed=compressed, top=top, log=_log) if compare_with else None
    if html:
        _write_html(a, html, top)
    _show(report, b.report if b is not None else None, json_out=json_out, top=top)
    if html and not json_out:
        err.print(f"wrote {html}", markup=False)
    for p in report["problems"]:
        if "symlink" in p:
            err.print(f"warning: {p}", markup=False, style="yellow")
    reasons = check_gates(report, max_size=gates_size, max_wasted=gates_wasted, max_cats=gates_cat)
    if reasons:
        for r in reasons:
            err.print(f"gate failed: {r}", markup=False, style="red")
        raise typer.Exit(1)
    if gates_size is not None or gates_wasted is not None or gates_cat:
        err.print(f"gates passed ({human(report['totals']['layers'])})", markup=False)


def _trace(matrix: Path, trace_variant: str | None, trace_image: str | None, argv: list[str], *, timeout: float,
           top: int, json_out: bool) -> None:
    """--trace VARIANT (the cell's smoke test) or --trace-image IMAGE -- CMD...: the file-access trace."""
    from ..audit.trace import print_trace, trace

    ref = trace_image
    if trace_variant:
        ref, argv = _trace_variant(matrix, trace_variant)
    rep = trace(ref, argv, timeout=timeout, top=top)
    if json_out:
        out.file.write(json.dumps(rep, indent=2) + "\n")
    else:
        print_trace(rep, out, top=top)


def _write_html(a, html: Path, top: int) -> None:
    from ..audit.html import write

    try:
        html.parent.mkdir(parents=True, exist_ok=True)
        write(a, str(html), top=top)
    except OSError as exc:
        raise UserInputError(f"cannot write {html}: {exc.strerror or exc}") from None


def _show(report: AuditReport, other: AuditReport | None, *, json_out: bool, top: int) -> None:
    """The report (or IMAGE against IMAGE_B) as JSON or text on stdout."""
    from ..audit.report import compare

    if json_out:
        doc = compare(report, other) if other is not None else report
        if other is not None:
            doc = {**doc, "reports": {"a": report, "b": other}}
        out.file.write(json.dumps(doc, indent=2) + "\n")
        return
    from ..audit.text import print_compare, print_report

    if other is not None:
        print_compare(compare(report, other), out, top=top)
    else:
        print_report(report, out, top=top)


def _attestations(ref: str, json_out: bool) -> None:
    """`audit REF --attestations`: what `publish` attached to REF's digest (attest.read_evidence)."""
    from .. import attest
    from ..publish import credentials
    from ..registry import Registry

    if not ref:
        raise UserInputError("name the image in its registry: imagegen audit HOST/REPO:TAG --attestations")
    host, repo, reference = attest.parse_ref(ref)
    digest, rows = attest.read_evidence(Registry(host, auth=credentials(host)), repo, reference)
    if json_out:
        out.file.write(json.dumps({"image": ref, "digest": digest, "attestations": rows}, indent=2) + "\n")
    else:
        out.print(f"{ref} ({digest})", markup=False)
        for r in rows:
            facts = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("kind", "digest", "via"))
            out.print(f"  {r['kind']:<11} {r['digest'][:19]}…  via {r['via']}  {facts}", markup=False)
    if not rows:
        raise GateFailed(f"{ref}: no attestations found (publish attaches an SBOM and provenance)")
