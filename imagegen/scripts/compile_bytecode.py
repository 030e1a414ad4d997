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

Imported by prune.py, last in the builder's install-and-prune RUN (so no layer holds the
environment both with and without .pyc files). What it compiles (compile_imported): the .py files
`import <framework>` and the framework's CPU smoke inference load (the start the image test runs,
on CPU and GPU cells alike), traced with the environment's own Python and the libraries the runtime
loads (closure; NVIDIA wheels' directories), in the venv and, from a copy
of the runtime base's sources, in the runtime's standard library (a base unpacked without
maintainer scripts ships none). Sources nothing imports at start stay source-only: their .pyc
would be bytes in every pull for no start-up time (Paddle 3.3.1: 16 of its 41 MB of bytecode).
"""

from __future__ import annotations

import compileall
import importlib.util
import io
import json
import os
import py_compile
import shutil
import time
from contextlib import redirect_stdout
from pathlib import Path

try:  # imagegen.scripts.compile_bytecode on the host; beside prune.py (which imports it) in the build
    from . import contract
except ImportError:
    import contract  # type: ignore[no-redef]

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


TRACE_MARK = "IMAGEGEN-TRACE "
TRACE_FAIL = "IMAGEGEN-TRACE-FAILED "
RESULT_MARK = contract.RESULT_MARK  # the smoke scripts' result line (imagegen/data/smoke/*.py)
TRACE_CODE = """
import json, os, sys
import importlib.machinery
seen = set()
get_code = importlib.machinery.SourceFileLoader.get_code
def traced_get_code(self, fullname):  # every source compiled, even a module removed again
    seen.add(self.path)                # (an import that failed and was caught: httpx._main)
    return get_code(self, fullname)
importlib.machinery.SourceFileLoader.get_code = traced_get_code
def report(phase):
    files = sorted(seen | {{getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}})
    sys.stdout.flush()
    print({mark!r} + json.dumps({{"phase": phase,
          "files": [f for f in files if f.endswith(".py") and f != {smoke!r}]}}), flush=True)
import {module}
report("import")
if {smoke!r}:
    import runpy
    sys.argv = [{smoke!r}, "cpu"]
    try:
        runpy.run_path({smoke!r}, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print({fail!r} + "the smoke script exited with %r" % (exc.code,), flush=True)
            os._exit(0)
    except BaseException as exc:
        print({fail!r} + "%s: %s" % (type(exc).__name__, exc), flush=True)
        os._exit(0)
    report("smoke")
"""


def _smoke_result_error(out: str) -> str:
    """The error a smoke script's last `IMAGEGEN-RESULT {json}` line reports ("" when none or ok)."""
    results = [line[len(RESULT_MARK):] for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if not results:
        return "the smoke script printed no IMAGEGEN-RESULT line"
    try:
        res = json.loads(results[-1])
    except ValueError:
        return "the smoke script's IMAGEGEN-RESULT line is not JSON"
    if isinstance(res, dict) and res.get("ok") is False:
        return f"the smoke inference reported ok=false: {res.get('error') or res}"
    return ""


def trace_import(python: str, module: str, *, libdirs: list[str], smoke: str | None = None,
                 timeout: float = 600) -> tuple[list[str] | None, str]:
    """The .py files that starting the framework loads: `import module`, then, with `smoke`, the
    framework's smoke script's CPU inference (its first inference's modules: what the image test's
    start runs, GPU cells included). Run with the environment's own Python, in a scratch HOME and
    cwd, without writing bytecode, with `libdirs` (the closure's libraries and, for a GPU cell, the
    NVIDIA wheels' directories the runtime registers with the loader) on the loader path.

    Returns (files, "") or (None, why) when the import or the smoke inference fails, hangs or
    reports a failure: the caller then compiles everything, which is never wrong, only bigger. A
    trace that stops early never passes for a complete one: the import alone misses what the first
    inference loads (Paddle 2.6.2 GPU: 122 bytecode paths written at every start)."""
    import signal
    import subprocess
    import tempfile

    timed_out = False
    with tempfile.TemporaryDirectory(prefix="imagegen-trace-") as tmp:
        env = dict(os.environ, HOME=tmp, TMPDIR=tmp, PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        if libdirs:
            env["LD_LIBRARY_PATH"] = ":".join(libdirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        code = TRACE_CODE.format(module=module, mark=TRACE_MARK, fail=TRACE_FAIL, smoke=smoke or "")
        try:
            proc = subprocess.Popen([python, "-c", code], cwd=tmp, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # a framework's abort handler may sleep forever
            out, err = proc.communicate()
            timed_out = True
    reports = {}
    for line in out.splitlines():
        if line.startswith(TRACE_MARK):
            rep = json.loads(line[len(TRACE_MARK):])
            reports[rep["phase"]] = rep["files"]
    want = "smoke" if smoke else "import"
    if want in reports:
        why = _smoke_result_error(out) if smoke else ""
        return (None, f"smoke inference (cpu): {why}") if why else (reports[want], "")
    failed = [line[len(TRACE_FAIL):] for line in out.splitlines() if line.startswith(TRACE_FAIL)]
    tail = [x for x in (err or "").strip().splitlines() if x.strip()][-1:]
    if timed_out:
        why = f"timed out after {timeout:g} s"
    elif failed:
        why = failed[-1]
    else:
        why = tail[0] if tail else f"exit {proc.returncode}"
    if "import" in reports:
        return None, f"smoke inference (cpu) after `import {module}`: {why}"[:400]
    return None, f"`import {module}`: {why}"[:400]


def _compile_one(job: tuple[str, str, str, str]) -> int:
    src, cfile, dfile, mode = job
    try:
        py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True, invalidation_mode=MODES[mode])
    except (py_compile.PyCompileError, OSError, ValueError):
        return -1
    return os.path.getsize(cfile)


def compile_files(jobs: list[tuple[str, str, str]], *, mode: str = "unchecked-hash") -> dict:
    """Compile (source, pyc path, name in tracebacks) triples in parallel.
    Returns {"files", "bytes", "errors", "seconds", "invalidation_mode"}."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.monotonic()
    work = [(s, c, d, mode) for s, c, d in jobs]
    if len(work) > 50 and (os.cpu_count() or 1) > 1:
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            sizes = list(pool.map(_compile_one, work, chunksize=32))
    else:
        sizes = [_compile_one(j) for j in work]
    ok = [n for n in sizes if n >= 0]
    return {"files": len(ok), "bytes": sum(ok), "errors": len(sizes) - len(ok),
            "seconds": round(time.monotonic() - t0, 2), "invalidation_mode": mode}


def compile_imported(site: Path, python: str, module: str, *, libdirs: list[str] | None = None,
                     stdlib: tuple[Path, str, Path] | None = None, smoke: str | None = None) -> dict:
    """Compile what starting the framework loads: the .py files `import module` imports, in site
    (in place) and, with stdlib = (copy of the runtime's stdlib, its path in the runtime, stage
    root), the runtime standard library's (pyc files under stage root, for COPY into the runtime).
    Falls back to everything under site when the trace fails (the import, or the smoke inference
    that follows it), with the reason in trace_error: never a partial trace.

    Returns {"scope": "import"|"all", "venv": stats, "stdlib": stats|None, "trace_error": str}."""
    files, why = trace_import(python, module, libdirs=libdirs or [], smoke=smoke)
    if files is None:
        out = {"scope": "all", "venv": compile_tree(site), "stdlib": None, "trace_error": why}
        if stdlib:
            src, ddir, stage = stdlib
            out["stdlib"] = compile_tree(src, ddir=ddir)
            move_pycache(src, stage / ddir.lstrip("/"))
        return out
    site_s = str(site.resolve()) + "/"
    venv_jobs = [(f, importlib.util.cache_from_source(f), f) for f in files
                 if os.path.realpath(f).startswith(site_s) or f.startswith(str(site) + "/")]
    out = {"scope": "import", "venv": compile_files(venv_jobs), "stdlib": None, "trace_error": ""}
    if stdlib:
        src, ddir, stage = stdlib
        prefix = ddir.rstrip("/") + "/"
        jobs = []
        for f in files:
            if f.startswith(prefix) and (src / f[len(prefix):]).is_file():
                rel = f[len(prefix):]
                cfile = importlib.util.cache_from_source(str(stage / ddir.lstrip("/") / rel))
                Path(cfile).parent.mkdir(parents=True, exist_ok=True)
                jobs.append((str(src / rel), cfile, f))
        out["stdlib"] = compile_files(jobs)
    return out


def move_pycache(src: Path, out: Path) -> None:
    """Move every __pycache__ under src to the same relative place under out."""
    for d, dirs, _files in os.walk(src):
        if "__pycache__" in dirs:
            dirs.remove("__pycache__")
            rel = Path(d).relative_to(src)
            dest = out / rel / "__pycache__"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(d) / "__pycache__"), str(dest))
