"""Pipeline-stage commands: lock, build, test, audit, base, doctor, scan, publish.

Each command is thin: it loads the matrix, selects cells and calls the stage's module.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import userpaths
from .cli import AllOpt, JsonOpt, MatrixOpt, VariantOpt, _cells, app
from .console import err, out
from .errors import GateFailed, ImagegenError, UserInputError


@app.command()
def build(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=16, help="Cells built in parallel.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the tag holds the same inputs.")] = False,
    no_test: Annotated[bool, typer.Option("--no-test", help="Tag without running the image test suite.")] = False,
    keep_cache: Annotated[bool, typer.Option("--keep-cache", help="Keep the builder stages' intermediate images "
                                                                   "(faster rebuilds after a change, GBs of disk).")] = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Directory for the tests' JUnit XML.",
                                                            callback=userpaths.output_dir)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse the engine's layer cache (cold build).")]
    = False,
    json_out: JsonOpt = False,
) -> None:
    """Build cells: lock, bootstrap bases, stage the wheelhouse, build, test, then tag."""
    from . import build as build_mod
    from .matrix import format_size

    m, cells = _cells(matrix, variant, all_)
    _install_interrupt_handler()
    results = build_mod.build_cells(m, cells, jobs=jobs, force=force, run_tests=not no_test,
                                    keep_cache=keep_cache, junit_dir=junit, no_cache=no_cache)
    if json_out:
        out.print_json(data=[{"ref": r.cell.ref, "local_ref": r.cell.local_ref, "status": r.status,
                              "image_id": r.image_id,
                              "seconds": round(r.seconds, 2), "size": r.size, "message": r.message,
                              "closure": r.closure, "prune": r.prune_report,
                              "log": str(r.log_path) if r.log_path else None} for r in results])
    elif len(results) > 1 or results[0].status != "failed":
        table = Table(box=None, header_style="bold")
        for col in ("cell", "status", "size", "time", "note"):
            table.add_column(col)
        for r in results:
            note = r.message if r.status != "built" else (f"closure: {', '.join(r.closure)}" if r.closure else "")
            table.add_row(r.cell.ref, r.status, format_size(r.size), f"{r.seconds:.1f}s", note)
        out.print(table)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        if len(failed) == 1:
            raise ImagegenError(failed[0].message)
        raise ImagegenError(f"{len(failed)} of {len(results)} cells failed: {', '.join(r.cell.ref for r in failed)}")


def _install_interrupt_handler() -> None:
    """Ctrl-C during a build: the daemon cancels the build when the connection drops; the tag was never
    moved (images are tagged only after their tests pass). Remove our temporary contexts and leave."""

    def handler(signum, frame):
        from . import build as build_mod

        err.print("error: interrupted; cancelling builds (tags unchanged)", style="red")
        build_mod.abort_cleanup()
        os._exit(130)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@app.command()
def publish(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    registry: Annotated[Optional[str], typer.Option("--registry", help="Override the matrix's registry "
                                                    "(host[:port]).")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="Override the matrix's namespace.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be pushed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Push built cells' tags to the registry (credentials: REGISTRY_USER/REGISTRY_TOKEN or docker login)."""
    from . import publish as publish_mod
    from .matrix import _REGISTRY

    if registry is not None and not _REGISTRY.match(registry):
        raise UserInputError(f"'{registry}' is not a valid registry host[:port]")
    m, cells = _cells(matrix, variant, all_)
    done = [publish_mod.publish(c, registry=registry, namespace=namespace, dry_run=dry_run) for c in cells]
    if json_out:
        out.print_json(data=[{"ref": p.cell.ref, "remote": p.remote, "digest": p.digest, "dry_run": p.dry_run}
                             for p in done])
        return
    for p in done:
        out.print(f"{p.remote}{'@' + p.digest if p.digest else ''}{'  (dry run)' if p.dry_run else ''}",
                  markup=False)


@app.command("test")
def test_cmd(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="JUnit XML file (or directory) to write.",
                                                             callback=userpaths.output_file_or_dir)]
    = Path("reports/junit-images.xml"),
    check: Annotated[Optional[list[str]], typer.Option("--check", help="Only these check modules (smoke, "
                                                       "gpu_ready, tag, policy, budget, hardening).")] = None,
    keyword: Annotated[Optional[str], typer.Option("-k", help="pytest -k expression over check names.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show every check as it runs.")] = False,
) -> None:
    """Test built images: smoke inference, GPU readiness, tag <-> contents, contents policy, size budget."""
    from . import testrun

    m, cells = _cells(matrix, variant, all_)
    if all_ and not variant:
        built, missing = testrun.split_built(cells)
        for c in missing:
            err.print(f"warning: {c.ref} is not built here; not tested", markup=False, style="yellow")
        if not built:
            raise UserInputError("no cell of the matrix is built here; run `imagegen build` first")
        cells = built
    summary = testrun.test_cells(cells, junit=junit, checks=check, keyword=keyword, verbose=verbose)
    summary.raise_for_failures()


# --- bases and environment ------------------------------------------------------------------------

base_app = typer.Typer(help="Base images: bootstrap from Debian packages (mmdebstrap) or pin from a registry.",
                       no_args_is_help=True)
app.add_typer(base_app, name="base")


def _register_bases() -> None:
    from . import bases, doctor

    base_app.command("build")(bases.base_build)
    base_app.command("list")(bases.base_list)
    app.command("doctor")(doctor.doctor)


_register_bases()


def _register_wheelhouse() -> None:
    from . import lock, wheelhouse

    app.command("lock")(lock.lock_command)
    app.command("fetch")(wheelhouse.fetch_command)
    cache = typer.Typer(help="The host's content-addressed wheel cache.", no_args_is_help=True)
    cache.command("prune")(wheelhouse.prune_command)
    app.add_typer(cache, name="cache")


_register_wheelhouse()


@app.command()
def scan(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    fail_on: Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 if a finding is at this severity or "
                                                   "above (LOW, MEDIUM, HIGH, CRITICAL).")] = None,
    ignore_unfixed: Annotated[bool, typer.Option("--ignore-unfixed", help="Only findings with a fix.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Use trivy's cached DB; no download.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Scan built cells for known vulnerabilities with trivy (OS packages from dpkg status, pip packages)."""
    from . import scan as scan_mod

    if fail_on:
        fail_on = fail_on.upper()
        if fail_on not in scan_mod.SEVERITIES:
            raise UserInputError(f"--fail-on takes one of {', '.join(scan_mod.SEVERITIES[1:])}")
    m, cells = _cells(matrix, variant, all_)
    results = [scan_mod.scan_image(c.local_ref, ignore_unfixed=ignore_unfixed, offline=offline) for c in cells]
    if json_out:
        out.print_json(data=[{"image": r.image, "findings": [f.__dict__ for f in r.findings]} for r in results])
    else:
        table = Table(box=None, header_style="bold")
        for col in ("image", *reversed(scan_mod.SEVERITIES)):
            table.add_column(col)
        for r in results:
            table.add_row(r.image, *(str(r.count(s)) for s in reversed(scan_mod.SEVERITIES)))
        out.print(table)
    scan_mod.gate(results, fail_on)


# --- audit ------------------------------------------------------------------------------------------

# Writes the smoke script to a real file first: frameworks read their models' source (Paddle's
# dy2static calls inspect.getsource), so exec() of a string is not enough.
_SMOKE_RUNNER = (
    "import runpy, sys, tempfile; f = tempfile.NamedTemporaryFile('w', suffix='.py', delete=False); "
    "f.write(sys.argv[1]); f.close(); sys.argv = [f.name] + sys.argv[2:]; "
    "runpy.run_path(f.name, run_name='__main__')"
)


def _trace_variant(selector: str) -> tuple[str, list[str]]:
    """--trace VARIANT: the cell's built image and its CPU smoke inference, run by the image's Python."""
    from . import compat, testrun
    from .cli import _load

    m = _load(Path(os.environ.get("IMAGEGEN_MATRIX", "matrix.yaml")))
    cells = m.select([selector])  # raises with candidates when nothing matches
    if len(cells) != 1:
        raise UserInputError(f"--trace takes one cell; '{selector}' matches {', '.join(c.ref for c in cells)}")
    (cell,) = cells
    built, _ = testrun.split_built([cell])
    if not built:
        raise UserInputError(f"{cell.ref} is not built here; run `imagegen build --variant {cell.ref}` first")
    script = compat.smoke_script(cell.fw)
    source = script.read_text()
    if "def host_prepare" in source:
        raise UserInputError(f"{cell.framework}'s smoke test needs a model prepared on the host; trace it with "
                             f"--trace-image {cell.ref} -- python3 YOUR_WORKLOAD.py")
    return cell.local_ref, [f"python{cell.python}", "-c", _SMOKE_RUNNER, source, "cpu"]


def _register_audit() -> None:
    from .audit import cli as audit_cli

    audit_cli.VARIANT_RESOLVER = _trace_variant
    app.command("audit")(audit_cli.audit_command)


_register_audit()
