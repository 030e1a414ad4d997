"""Lock and wheel-cache commands: lock, fetch, cache prune."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..console import out
from ..errors import ImagegenError, UserInputError
from ..units import format_size
from . import userpaths
from .app import AllOpt, JsonOpt, MatrixOpt, VariantOpt, app, cache_app, select_cells

if TYPE_CHECKING:
    from ..lockfile import LockRequest


@app.command("lock")
def lock_command(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=16, help="Cells resolved in parallel.")] = 2,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Resolve again even if a lock still matches its "
                                                                  "cell (picks up new dependency releases).")] = False,
    check: Annotated[bool, typer.Option("--check", help="No network: fail if a lock is missing or does not match "
                                                        "its cell.")] = False,
    no_fetch: Annotated[bool, typer.Option("--no-fetch", help="Only write the locks; do not fill the wheel "
                                                              "cache.")] = False,
    skip_unreachable_index: Annotated[Optional[list[str]], typer.Option(
        "--skip-unreachable-index", help="An extra index (by name, or 'all') to leave out when it cannot be "
                                         "reached, resolving from the host pip configuration instead.")] = None,
    closure: Annotated[bool, typer.Option("--closure", help="Also resolve each cell's ELF closure (the Debian "
                                                            "packages its runtime base lacks) when missing or "
                                                            "stale, and write locks/<cell>.closure.json.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Resolve each cell's wheels for its target on this host and write locks/<cell>.txt with sha256 hashes.

    With --check (no network): also fail when a cell's committed ELF closure (locks/<cell>.closure.json)
    is missing or was resolved for other inputs; its next build would then read a Debian index."""
    from .. import pipeline

    m, cells = select_cells(matrix, variant, all_)
    run_lock(pipeline.lock_requests(m, cells), check=check, jobs=jobs, upgrade=upgrade, fetch=not no_fetch,
             skip_unreachable=skip_unreachable_index or [], json_out=json_out,
             closures=pipeline.closure_status(m, cells) if check else ())
    if closure and not check:
        for cell in cells:
            path, packages = pipeline.ensure_closure(m, cell)
            out.print(f"closure    {path}  ({', '.join(packages) or 'no packages'})", markup=False)


def run_lock(cells: dict[str, tuple[LockRequest, Path]], *, check: bool = False, jobs: int = 2,
             upgrade: bool = False, fetch: bool = True, skip_unreachable: list[str] | tuple[str, ...] = (),
             json_out: bool = False, closures: Iterable[tuple[str, Path, str]] = ()) -> None:
    """`imagegen lock` for {cell id: (request, lock path)}: check (no network) or lock, and print the
    result table (or JSON) on stdout. With ``check``, ``closures`` (cell id, path, status) are checked
    with the locks, in the same table. ImagegenError when a check fails."""
    from ..lock import lock_cells, lock_status

    if check:
        rows = [("lock", cid, path, lock_status(req, path)) for cid, (req, path) in cells.items()]
        rows += [("closure", cid, path, state) for cid, path, state in closures]
        if json_out:
            out.print_json(data=[{"kind": k, "cell": c, "path": str(p), "status": s} for k, c, p, s in rows])
        else:
            for _k, _c, p, s in rows:
                out.print(f"{s:<11} {p}", markup=False)
        bad = [c if k == "lock" else f"{c} (closure)" for k, c, _, s in rows if s != "up-to-date"]
        if bad:
            raise ImagegenError(f"{len(bad)} lock file(s) missing or stale: {', '.join(bad)}",
                                hint="run `imagegen lock` (with --closure for a closure) and commit locks/")
        return
    skip = ["*" if s == "all" else s for s in skip_unreachable]
    results = lock_cells({cid: req for cid, (req, _) in cells.items()}, Path("locks"), jobs, upgrade=upgrade,
                         fetch=fetch, skip_unreachable=skip,
                         paths={cid: path for cid, (_, path) in cells.items()})
    if json_out:
        out.print_json(data=[{"cell": r.cell_id, "path": str(r.path), "status": r.status,
                              "wheels": len(r.lock.wheels) if r.lock else 0,
                              "bytes": r.bytes, "seconds": round(r.seconds, 2)} for r in results])
        return
    for r in results:
        n = len(r.lock.wheels) if r.lock else 0
        size = f"  {format_size(r.bytes)}" if r.bytes else ""
        out.print(f"{r.status:<10} {r.path}  ({n} wheels{size})", markup=False)


def _lock_files(paths: list[Path] | None) -> list[Path]:
    found: list[Path] = []
    for p in paths or [Path("locks")]:
        if p.is_dir():
            found += sorted(p.glob("*.txt"))
        elif p.exists():
            found.append(p)
        else:
            raise UserInputError(f"no such lock file or directory: {p}")
    if not found:
        raise UserInputError(f"no lock files in {', '.join(str(p) for p in paths or [Path('locks')])}; "
                             "run `imagegen lock` first")
    return found


@app.command("fetch")
def fetch_command(
    locks: Annotated[Optional[list[Path]], typer.Argument(help="Lock files or directories (default: locks/).",
                                                                  callback=userpaths.input_files_or_dirs)] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=16, help="Parallel downloads.")] = 4,
) -> None:
    """Fill the wheel cache from lock files (no resolution): each distinct wheel is downloaded once."""
    from ..lockfile import read_lock
    from ..paths import wheels_root
    from ..wheelhouse import fetch_many

    files = _lock_files(locks)
    parsed = [read_lock(f) for f in files]
    paths = fetch_many(parsed, jobs)
    total = sum(p.stat().st_size for p in paths.values())
    out.print(f"{len(paths)} wheels for {len(files)} lock(s) in {wheels_root()} ({format_size(total)})", markup=False)


@cache_app.command("prune")
def prune_command(
    locks: Annotated[Optional[list[Path]], typer.Argument(help="Keep the wheels of these lock files or "
                                                               "directories (default: locks/).",
                                                               callback=userpaths.input_files_or_dirs)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only report what would be removed.")] = False,
) -> None:
    """Remove cached wheels that none of the given locks reference, and the work directories (build
    contexts, base bootstraps, test mounts) that killed imagegen processes left behind."""
    from ..flock import reap
    from ..lockfile import read_lock
    from ..paths import wheels_root, work_dirs
    from ..wheelhouse import prune

    parsed = [read_lock(f) for f in _lock_files(locks)]
    files, size = prune(parsed, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {files} wheel(s), {format_size(size)} from {wheels_root()}", markup=False)
    left = [r for parent, prefix in work_dirs() for r in reap(parent, prefix, dry_run=dry_run)]
    out.print(f"{verb} {len(left)} work dir(s) of imagegen processes that are gone, "
              f"{format_size(sum(n for _, n in left))}", markup=False)
