#!/usr/bin/env python3
"""Build benchmark: imagegen's multi-stage cells against a naive single-stage Dockerfile with the
same wheels, built side by side in one run (these machines are noisy: compare ratios, not seconds).

For each cell:
  naive   FROM the same Debian builder base; COPY the same wheelhouse; pip install into a venv.
          No pruning, no second stage (what most hand-written Dockerfiles do).
  imagegen `imagegen build --force --no-test` with no layer cache (cold), then the same command
          again without --force (no-op: must be skipped).
Prints a Markdown table (stdout) and writes bench/results-build.json.

    python bench/build_bench.py                          # the default CPU cells
    python bench/build_bench.py --cell gpu-cuda11.8-slim  # add the GPU flagship (~15 GB of disk)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagegen import engine, matrix, pipeline  # noqa: E402

# The naive Dockerfile of shared/FACTS.md: the distribution's pip, then pip install (here from the
# same local wheels, since containers cannot reach PyPI through the proxy).
NAIVE = """FROM {builder}
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv
COPY wheels/ /tmp/wheels/
RUN python{py} -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.lock
ENV PATH=/opt/venv/bin:$PATH
"""
# The most favourable naive variant: Python already in the base, only the pip install.
NAIVE_PIP_ONLY = """FROM {builder}
COPY wheels/ /tmp/wheels/
RUN python{py} -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.lock
ENV PATH=/opt/venv/bin:$PATH
"""

DEFAULT_CELLS = ["paddle:3.3.1-cpu-slim", "onnxruntime:cpu-slim", "torch:cpu-slim", "paddle:3.3.1-cpu-full"]


def docker_build(path: Path, tag: str) -> float:
    api = engine.api()
    t0 = time.monotonic()
    for chunk in api.build(path=str(path), tag=tag, rm=True, forcerm=True, nocache=True, decode=True, pull=False):
        if "error" in chunk:
            raise SystemExit(f"naive build failed: {chunk['error']}")
    return time.monotonic() - t0


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return time.monotonic() - t0, proc.stdout


def bench_cell(m: matrix.Matrix, cell: matrix.Cell) -> dict:
    api = engine.api()
    work = Path(tempfile.mkdtemp(prefix="imagegen-bench-"))
    naive_tag = f"imagegen-bench/naive:{cell.id}"
    try:
        prep = pipeline.prepare(m, cell, work)  # also bootstraps bases, locks and fetches: not timed
        naive_ctx = work / "naive"
        naive_ctx.mkdir()
        shutil.copytree(prep.context / "wheels", naive_ctx / "wheels", copy_function=_link)
        (naive_ctx / "Dockerfile").write_text(NAIVE.format(builder=prep.refs["builder"], py=cell.python))
        naive_s = docker_build(naive_ctx, naive_tag)
        naive_size = api.inspect_image(naive_tag)["Size"]
        api.remove_image(naive_tag, force=True)
        (naive_ctx / "Dockerfile").write_text(NAIVE_PIP_ONLY.format(builder=prep.refs["builder"], py=cell.python))
        pip_only_s = docker_build(naive_ctx, naive_tag)
        cold_s, out = run([sys.executable, "-m", "imagegen", "build", "--variant", cell.ref, "--force", "--no-cache",
                           "--no-test", "--json"])
        (res,) = json.loads(out)
        noop_s, out = run([sys.executable, "-m", "imagegen", "build", "--variant", cell.ref, "--no-test", "--json"])
        (noop,) = json.loads(out)
        size = api.inspect_image(cell.ref)["Size"]
        return {"cell": cell.ref, "naive_bytes": naive_size, "naive_s": round(naive_s, 1),
                "naive_pip_only_s": round(pip_only_s, 1), "bytes": size,
                "cold_s": round(cold_s, 1), "noop_s": round(noop_s, 2), "noop_status": noop["status"],
                "budget": cell.budget_size, "closure": res.get("closure", [])}
    finally:
        try:
            api.remove_image(naive_tag, force=True)
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(work, ignore_errors=True)


def _link(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", action="append", help="selector (repeatable); default: the CPU cells")
    ap.add_argument("--matrix", default=str(ROOT / "matrix.yaml"))
    args = ap.parse_args()
    m = matrix.load(args.matrix)
    cells = m.select(args.cell or DEFAULT_CELLS)
    rows = [bench_cell(m, c) for c in cells]
    (ROOT / "bench" / "results-build.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| cell | naive single-stage | imagegen | size ratio | budget | naive build (apt pip + pip) | "
          "naive build (pip only) | imagegen cold build | time ratio (vs apt+pip / vs pip only) | no-op rebuild |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['cell']}` | {mb(r['naive_bytes'])} | **{mb(r['bytes'])}** | "
              f"{r['bytes'] / r['naive_bytes']:.2f}× | {mb(r['budget'])} | {r['naive_s']} s | {r['naive_pip_only_s']} s | "
              f"{r['cold_s']} s | {r['cold_s'] / r['naive_s']:.2f}× / {r['cold_s'] / r['naive_pip_only_s']:.2f}× | "
              f"{r['noop_s']} s ({r['noop_status']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
