"""Pipeline commands: build, test (scan, publish, ci matrix: release_cmds.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..console import err, out
from ..errors import ImagegenError, UserInputError
from . import userpaths
from .app import AllOpt, JsonOpt, MatrixOpt, VariantOpt, app, select_cells


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
    builder: Annotated[Optional[str], typer.Option("--builder", help="Build with this buildx builder (BuildKit; a "
                                                   "remote or kubernetes builder scales builds past this machine). "
                                                   "Default: BuildKit when `docker buildx` answers, else the classic "
                                                   "builder; DOCKER_BUILDKIT=0 forces the classic one.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build cells: lock, bootstrap bases, stage the wheelhouse, build, test, then tag.

    A GPU cell with `gpu_archs` (EXPERIMENTAL: not yet checked by a kernel launch on a GPU, see
    bench/fatprune_on_device.py) keeps only the CUDA kernels those GPUs load: every fat binary of
    the environment is rewritten and verified in the builder (the `cuda_archs` rule of the prune report).
    """
    from .. import pipeline
    from ..reproduce import env_epoch
    from ..units import format_size

    m, cells = select_cells(matrix, variant, all_)
    env_epoch()  # a bad SOURCE_DATE_EPOCH is the user's mistake: one line, exit 2, before any cell starts
    _install_interrupt_handler()
    results = pipeline.build_cells(m, cells, jobs=jobs, force=force, run_tests=not no_test,
                                    keep_cache=keep_cache, junit_dir=junit, no_cache=no_cache, builder=builder)
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
    """Ctrl-C or SIGTERM during a build: cancel the builds in flight (buildx is sent SIGINT; the classic
    builder's daemon cancels when the connection drops) and remove what they made (step containers and
    images, images an exporter or a late commit wrote, temporary contexts). The tag was never moved
    (images are tagged only after their tests pass)."""

    def handler(signum, frame):
        from .. import pipeline

        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        err.print(f"error: {what}; cancelling builds (tags unchanged)", style="red")
        pipeline.abort_cleanup()
        os._exit(128 + signum)  # 130 for Ctrl-C, 143 for SIGTERM

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@app.command("test")
def test_cmd(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="JUnit XML file (or directory) to write.",
                                                             callback=userpaths.output_file_or_dir)]
    = Path("reports/junit-images.xml"),
    check: Annotated[Optional[list[str]], typer.Option("--check", help="Only these check modules (smoke, bytecode, "
                                                       "gpu_ready, tag, policy, budget, hardening).")] = None,
    keyword: Annotated[Optional[str], typer.Option("-k", help="pytest -k expression over check names.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show every check as it runs.")] = False,
) -> None:
    """Test built images: smoke inference, GPU readiness, tag <-> contents, contents policy, size budget."""
    from .. import testrun

    m, cells = select_cells(matrix, variant, all_)
    if all_ and not variant:
        built, missing = testrun.split_built(cells)
        for c in missing:
            err.print(f"warning: {c.ref} is not built here; not tested", markup=False, style="yellow")
        if not built:
            raise UserInputError("no cell of the matrix is built here; run `imagegen build` first")
        cells = built
    from .. import pipeline

    summary = pipeline.test_cells(m, cells, junit=junit, checks=check, keyword=keyword, verbose=verbose)
    summary.raise_for_failures()
