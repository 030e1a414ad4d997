#!/usr/bin/env python3
"""Both closure resolvers, side by side, on the default cells' missing sonames.

    python bench/closure_resolvers.py [--suite bookworm] [--gpu] [--libc6-base] [--cells ID ...]

For each CPU cell of matrix.yaml on the suite (``--gpu``: GPU cells too, several GB of wheels) whose
lock is committed, the wheels come from the project's wheel cache (downloaded when absent) and are
scanned; the sonames the runtime base lacks are resolved to Debian packages by

  contents   the suite's Contents index (imagegen.closure.contents_index; the resolver before debarchive)
  packages   Debian's library package naming over the verified Packages index, each candidate
             confirmed from its own .deb (imagegen.debarchive.resolve_by_name); nothing else
  auto       packages, then the Contents index for what naming cannot confirm (compute_closure's default)

each twice: cold (an empty cache directory) and warm (the same directory again). The runtime base's
sonames come from its local image when the engine has it (imagegen.bases.role_sonames, cached);
else, or with ``--libc6-base``, from a base of libc6 alone (its .deb's library names; more sonames
to resolve). Prints markdown:
per soname the package each resolver chose, per cell the closure, and per run the seconds, requests and
bytes downloaded (imagegen.debarchive.transfers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESOLVERS = ("contents", "packages", "auto")


def runtime_sonames(cell, libc6: set[str], force_libc6: bool) -> tuple[set[str], str]:
    from imagegen import bases

    if not force_libc6:
        ref = cell.base_spec.role_ref(cell.base, cell.runtime_role)
        try:
            if bases.local_image(ref) is not None:
                return bases.role_sonames(ref), f"{ref} (local image)"
        except Exception as exc:  # noqa: BLE001 - no engine: fall back, and say so
            print(f"<!-- no engine ({exc}); using a libc6-only base -->", file=sys.stderr)
    return libc6, "libc6 only"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--gpu", action="store_true", help="GPU cells too (several GB of wheels)")
    ap.add_argument("--libc6-base", action="store_true", help="resolve against a base of libc6 alone")
    ap.add_argument("--cells", nargs="*", help="cell ids (default: every CPU cell on the suite with a lock)")
    args = ap.parse_args(argv)

    from imagegen import closure, debarchive, lockfile, matrix, wheelhouse
    from imagegen.closure import needed_from_wheels, resolve

    m = matrix.load(ROOT / "matrix.yaml")
    cells = [c for c in m.active if c.base_spec and c.base_spec.suite == args.suite
             and (args.gpu or c.device == "cpu") and (ROOT / "locks" / f"{c.id}.txt").exists()]
    if args.cells:
        cells = [c for c in cells if c.id in args.cells]
    if not cells:
        print(f"no cell with a lock on {args.suite}", file=sys.stderr)
        return 2
    mirror = cells[0].base_spec.mirror
    with tempfile.TemporaryDirectory(prefix="closure-bench-libc6-") as tmp:  # libc6's library names, from its .deb
        release = debarchive.fetch_release(args.suite, mirror, cache_dir=tmp)
        pkgs = debarchive.packages_index(release, "amd64", cache_dir=tmp)
        libc6 = set(debarchive.deb_libraries(pkgs.packages["libc6"], mirror, cache_dir=tmp).libs)

    missing: dict[str, dict[str, list[str]]] = {}  # cell id -> soname -> needed by
    base_used: dict[str, str] = {}
    for cell in cells:
        lk = lockfile.read_lock(ROOT / "locks" / f"{cell.id}.txt")
        wheels = wheelhouse.fetch(lk)
        scan = needed_from_wheels(wheels)
        base, base_used[cell.id] = runtime_sonames(cell, libc6, args.libc6_base)
        gpu = cell.fw.versions[cell.version].gpu if cell.device == "gpu" else None
        from imagegen import compat

        _, missing[cell.id] = resolve(scan, base, compat.cuda().host_provided,
                                      ignore=sorted(gpu.closure_ignore) if gpu else ())
    sonames = sorted({s for per in missing.values() for s in per})

    results: dict[str, dict[str, str | None]] = {}
    runs: list[tuple[str, str, float, int, int]] = []
    for r in RESOLVERS:
        with tempfile.TemporaryDirectory(prefix=f"closure-bench-{r}-") as cache:
            for phase in ("cold", "warm"):
                t = debarchive.transfers
                n0, b0, t0 = t.requests, t.bytes, time.monotonic()
                mapped = closure.map_packages(sonames, args.suite, "amd64", mirror, resolver=r, cache_dir=cache)
                runs.append((r, phase, time.monotonic() - t0, t.requests - n0, t.bytes - b0))
            results[r] = {s: (mapped.found[s][0] if s in mapped.found else None) for s in sonames}
            if r == "contents" and mapped.hints:
                print(f"<!-- contents: {next(iter(mapped.hints.values()))} -->", file=sys.stderr)
            if r == "auto":
                methods = {s: mapped.found[s][1]["method"] for s in mapped.found}

    print(f"## Closure resolvers on Debian {args.suite} ({len(cells)} cells, {len(sonames)} missing sonames)\n")
    print("| cell | runtime base |\n|---|---|")
    for cell in cells:
        print(f"| `{cell.id}` | {base_used[cell.id]} |")
    print("\n| soname | contents | packages (naming + .deb) | auto | auto's method | same? |\n|---|---|---|---|---|---|")
    for s in sonames:
        row = [results[r][s] or "—" for r in RESOLVERS]
        same = "yes" if results["contents"][s] == results["auto"][s] else "**no**"
        print(f"| `{s}` | {' | '.join(row)} | {methods.get(s, '—')} | {same} |")
    print("\n| cell | contents | auto | same? |\n|---|---|---|---|")
    for cell in cells:
        pk = {r: sorted({results[r][s] for s in missing[cell.id] if results[r][s]}) for r in ("contents", "auto")}
        print(f"| `{cell.id}` | {', '.join(pk['contents']) or '—'} | {', '.join(pk['auto']) or '—'} | "
              f"{'yes' if pk['contents'] == pk['auto'] else '**no**'} |")
    print("\n| resolver | cache | seconds | requests | downloaded |\n|---|---|---|---|---|")
    for r, phase, secs, reqs, nbytes in runs:
        print(f"| {r} | {phase} | {secs:.2f} | {reqs} | {nbytes / 1e6:.2f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
