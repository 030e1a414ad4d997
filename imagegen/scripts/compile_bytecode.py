#!/usr/bin/env python3
"""Compile Python bytecode at build time, inside the builder stage. Standard library only.

Why: a slim image's root is read-only in production and its environment belongs to root, while
the container runs as an unprivileged user with PYTHONDONTWRITEBYTECODE=1. Python can then never
cache what it compiles, so an image without `.pyc` files compiles every module it imports again
on every container start (Paddle 3.3.1: about 4 s of its cold start).

The `.pyc` files are written with `--invalidation-mode unchecked-hash` (PEP 552): the header holds
a hash of the source instead of its mtime, and Python loads the file without looking at the
source again. So the result is reproducible (no timestamps), stays valid on a read-only root
and after `COPY --from` (which may change mtimes), and nothing ever rewrites it at run time.

Two uses:
  - imported by prune.py for the virtual environment (after pruning, in the same RUN, so no
    layer holds the environment both with and without bytecode);
  - `compile_bytecode.py --stdlib SRC --ddir /usr/lib/python3.X --out DIR`: compile a copy of the
    runtime base's standard library (a base unpacked without maintainer scripts ships none) and
    move only the `__pycache__` directories to DIR, for `COPY --from` into the runtime.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import io
import json
import os
import py_compile
import shutil
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

MODES = {
    "unchecked-hash": py_compile.PycInvalidationMode.UNCHECKED_HASH,
    "checked-hash": py_compile.PycInvalidationMode.CHECKED_HASH,
    "timestamp": py_compile.PycInvalidationMode.TIMESTAMP,
}


def pyc_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _dirs, files in os.walk(root) if os.path.basename(d) == "__pycache__"
            for f in files if f.endswith(".pyc")]


def remove_bytecode(root: Path) -> int:
    """Remove every __pycache__ directory and stray .pyc under root; return the bytes removed."""
    total = 0
    for d, dirs, files in os.walk(root):
        for name in list(dirs):
            if name == "__pycache__":
                p = Path(d) / name
                total += sum(f.stat().st_size for f in p.iterdir() if f.is_file() and not f.is_symlink())
                shutil.rmtree(p)
                dirs.remove(name)
        for f in files:
            if f.endswith(".pyc"):
                p = Path(d) / f
                if not p.is_symlink():
                    total += p.stat().st_size
                p.unlink()
    return total


def compile_tree(root: Path, *, mode: str = "unchecked-hash", ddir: str | None = None,
                 workers: int = 0) -> dict:
    """Compile every .py under root (optimization level of this interpreter, i.e. 0) into
    __pycache__. Files that do not compile (Python 2 templates some wheels ship, for example) are
    counted, not fatal: Python would fail on them at import time too.

    Returns {"files": pyc count, "bytes": pyc bytes, "errors": failures, "seconds": wall time}."""
    t0 = time.monotonic()
    with redirect_stdout(io.StringIO()):  # compileall names each failure even when quiet=1
        compileall.compile_dir(str(root), ddir=ddir, quiet=1, workers=workers, force=True,
                               invalidation_mode=MODES[mode])
    pycs = pyc_files(root)
    have = {str(p) for p in pycs}
    errors = sum(1 for d, _dirs, files in os.walk(root) for f in files
                 if f.endswith(".py") and importlib.util.cache_from_source(os.path.join(d, f)) not in have)
    return {"files": len(pycs), "bytes": sum(p.stat().st_size for p in pycs), "errors": errors,
            "seconds": round(time.monotonic() - t0, 2), "invalidation_mode": mode}


def move_pycache(src: Path, out: Path) -> None:
    """Move every __pycache__ under src to the same relative place under out."""
    for d, dirs, _files in os.walk(src):
        if "__pycache__" in dirs:
            dirs.remove("__pycache__")
            rel = Path(d).relative_to(src)
            dest = out / rel / "__pycache__"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(d) / "__pycache__"), str(dest))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stdlib", required=True, type=Path, help="a copy of the runtime's standard library")
    ap.add_argument("--ddir", required=True, help="where that library lives in the runtime (for tracebacks)")
    ap.add_argument("--out", required=True, type=Path, help="receives only the __pycache__ directories")
    ap.add_argument("--mode", choices=sorted(MODES), default="unchecked-hash")
    args = ap.parse_args()
    remove_bytecode(args.stdlib)
    stats = compile_tree(args.stdlib, mode=args.mode, ddir=args.ddir)
    move_pycache(args.stdlib, args.out / args.ddir.lstrip("/"))
    print("IMAGEGEN-STDLIB-BYTECODE " + json.dumps(stats, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
