#!/usr/bin/env python3
"""Cold-start benchmark: `docker run` to the end of `import <framework>`, and `docker run` to the
first smoke-inference output, for imagegen's cells against the most favourable naive single-stage
build of the same locked wheels, measured side by side (interleaved) in one run.

For each cell, three images (built first, not timed):
  naive    FROM the cell's Debian builder base (Python and its stdlib bytecode already there);
           apt-get the Debian packages the cell's closure names (Paddle: libgomp1); COPY the same
           locked wheelhouse; `pip install` into a venv (pip writes .pyc files).
           The "pip only" variant of bench/build_bench.py: nothing else in the image.
  imagegen the cell as `imagegen build` makes it (slim cells: bytecode compiled at build time).
  drop     slim cells only: the same cell with `slimming: {bytecode: drop}` (the rule's old
           default), built untagged and tagged imagegen-bench/coldstart-drop:<cell>.
Each figure is the median of --runs runs (after one discarded warm-up run per image), with
`docker run --rm --network none`; the host times from starting `docker run` to reading the
marker line the container prints. Images run with their own user, HOME and environment.

Writes bench/results-coldstart.json (read by `imagegen audit` and the build's slimming report for
the bytecode rule's trade-off; a copy goes to $IMAGEGEN_CACHE/bench/coldstart.json) and prints a
Markdown table on stdout.

    python bench/coldstart.py                              # the CPU cells, 5 runs each
    python bench/coldstart.py --cell torch:cpu-slim --runs 7
    DOCKER_HOST=unix:///tmp/d.sock python bench/coldstart.py --build-network host   # a private daemon
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagegen import build, coldstart, compat, engine, matrix, pipeline  # noqa: E402

NAIVE = """FROM {builder}
RUN apt-get update && apt-get install -y --no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*
COPY wheels/ /tmp/wheels/
RUN python{py} -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.lock \\
 && rm -rf /tmp/wheels
ENV PATH=/opt/venv/bin:$PATH
"""

DEFAULT_CELLS = ["paddle:3.3.1-cpu-slim", "onnxruntime:cpu-slim", "torch:cpu-slim", "paddle:3.3.1-cpu-full"]
MOUNT = "/.imagegen-bench"
IMPORTED = "IMAGEGEN-IMPORTED"
RESULT = "IMAGEGEN-RESULT "
TIMEOUT = 300


def docker_build(path: Path, tag: str) -> None:
    for chunk in engine.api().build(path=str(path), tag=tag, rm=True, forcerm=True, decode=True, pull=False):
        if "error" in chunk:
            raise SystemExit(f"naive build failed: {chunk['error']}")


def _link(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def smoke_dir(cell: matrix.Cell, work: Path) -> tuple[Path, list[str]]:
    """The cell's smoke script (and the data its host half prepares) in a directory any UID can read."""
    src = compat.smoke_script(cell.fw)
    d = work / "smoke"
    d.mkdir()
    shutil.copyfile(src, d / "smoke.py")
    args: list[str] = []
    tree = ast.parse(src.read_text())
    if any(isinstance(n, ast.FunctionDef) and n.name == "host_prepare" for n in tree.body):
        spec = importlib.util.spec_from_file_location(f"imagegen_bench_smoke_{cell.framework}", src)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        args = list(mod.host_prepare(str(d / "data")) or []) + [f"{MOUNT}/data"]
    for p in [d, *d.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return d, args


def timed_run(image: str, mount: Path, argv: list[str], marker: str) -> float:
    """Seconds from starting `docker run` to the marker line on the container's stdout."""
    cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{mount}:{MOUNT}:ro", "--entrypoint", argv[0],
           image, *argv[1:]]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = None
    out = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if seen is None and line.startswith(marker):
            seen = time.monotonic() - t0
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"{image}: {' '.join(argv)} timed out") from None
    if seen is None or proc.returncode != 0:
        raise SystemExit(f"{image}: {' '.join(argv)} failed (exit {proc.returncode}): {(err or ''.join(out))[-800:]}")
    if marker == RESULT:
        result = json.loads(next(x for x in out if x.startswith(RESULT))[len(RESULT):])
        if not result.get("ok"):
            raise SystemExit(f"{image}: smoke inference did not pass: {result}")
    return seen


TRANSIENT = ("failed to create endpoint", "could not find bridge")  # another daemon on the host touched docker0


def retried(what: str, fn, tries: int = 4):
    """fn() again after a transient engine networking error (the build's RUN steps that fetch
    Debian packages need the default bridge)."""
    for i in range(tries):
        try:
            return fn()
        except (SystemExit, Exception) as exc:  # noqa: BLE001
            if i == tries - 1 or not any(t in str(exc) for t in TRANSIENT):
                raise
            print(f"{what}: transient engine error, retrying in 15 s: {str(exc)[:200]}", file=sys.stderr)
            time.sleep(15)


def imagegen_build(m: matrix.Matrix, cell: matrix.Cell) -> None:
    """`imagegen build --variant CELL --no-test` (in this process, so --build-network applies)."""
    pipeline.build_one(m, cell, force=False, run_tests=False, progress=build.Progress())


def build_network(mode: str) -> None:
    """Builds whose RUN steps need the network (the sysroot stage fetches Debian packages) use
    this network mode: `host` on a private daemon started with --bridge=none (bench on a daemon
    of its own, without touching the host's bridges)."""
    import docker

    orig = docker.APIClient.build

    def build_with_network(self, *args, **kwargs):
        kwargs.setdefault("network_mode", mode)
        return orig(self, *args, **kwargs)

    docker.APIClient.build = build_with_network


def build_images(m: matrix.Matrix, cell: matrix.Cell, work: Path, images: dict[str, str]) -> None:
    """Fill images with naive, imagegen (and drop for slim cells) image references."""
    prep = pipeline.prepare(m, cell, work / "prep")
    naive_ctx = work / "naive"
    naive_ctx.mkdir()
    shutil.copytree(prep.context / "wheels", naive_ctx / "wheels", copy_function=_link)
    # the Debian packages the framework needs beyond the builder base (Paddle: libgomp1), as a naive
    # Dockerfile would apt-get them; without them `import paddle` fails (shared/FACTS.md, trap 2)
    closure_of = prep.closure
    if cell.flavor != "slim":  # a dev base holds what a full cell needs: take its slim sibling's closure
        slim = [c for c in m.cells if not c.excluded and (c.framework, c.version, c.device, c.python, c.flavor) ==
                (cell.framework, cell.version, cell.device, cell.python, "slim")]
        if slim:
            closure_of = pipeline.prepare(m, slim[0], work / "prep-slim").closure
    packages = " ".join(sorted(closure_of)) or "ca-certificates"
    (naive_ctx / "Dockerfile").write_text(NAIVE.format(builder=prep.refs["builder"], py=cell.python, packages=packages))
    images["naive"] = f"imagegen-bench/coldstart-naive:{cell.id}"
    retried(f"{cell.ref} (naive)", lambda: docker_build(naive_ctx, images["naive"]))
    retried(cell.ref, lambda: imagegen_build(m, cell))
    images["imagegen"] = cell.ref
    if cell.flavor == "slim" and cell.slimming.bytecode != "drop":
        drop = dataclasses.replace(cell, slimming=dataclasses.replace(cell.slimming, bytecode="drop"))

        def build_drop() -> tuple[str, list[str]]:
            dprep = pipeline.prepare(m, drop, work / "drop")
            return build.docker_build(drop, dprep.context, dprep.digest, dprep.closure, work / "drop.log",
                                      build.Progress())

        image_id, steps = retried(f"{cell.ref} (bytecode: drop)", build_drop)
        images["drop"] = f"imagegen-bench/coldstart-drop:{cell.id}"
        engine.api().tag(image_id, *images["drop"].rsplit(":", 1), force=True)
        build.remove_images(steps, keep={image_id})


def bench_cell(m: matrix.Matrix, cell: matrix.Cell, runs: int) -> dict:
    api = engine.api()
    work = Path(tempfile.mkdtemp(prefix="imagegen-coldstart-"))
    work.chmod(0o755)
    images: dict[str, str] = {}
    try:
        build_images(m, cell, work, images)
        mount, args = smoke_dir(cell, work)
        py = f"python{cell.python}"
        probes = {
            "import": ([py, "-c", f"import {cell.fw.import_name}; print({IMPORTED!r}, flush=True)"], IMPORTED),
            "first_inference": ([py, f"{MOUNT}/smoke.py", "cpu", *args], RESULT),
        }
        times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in probes} for k in images}
        for i in range(runs + 1):  # run 0 is the warm-up (page cache), not counted
            for probe, (argv, marker) in probes.items():
                for kind, ref in images.items():  # interleaved: machine noise hits every image alike
                    s = timed_run(ref, mount, argv, marker)
                    if i:
                        times[kind][probe].append(round(s, 3))
            print(f"{cell.ref}: run {i}/{runs} done", file=sys.stderr)
        row: dict = {"cell": cell.ref, "flavor": cell.flavor, "runs": runs, "budget": cell.budget_size,
                     "bytecode": cell.slimming.bytecode,
                     "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for kind, ref in images.items():
            info = api.inspect_image(ref)
            row[kind] = {"image": ref, "id": info["Id"], "bytes": info["Size"],
                         **{p: statistics.median(v) for p, v in times[kind].items()},
                         "samples": times[kind]}
        if "drop" in row:
            row["bytecode_rule"] = {
                "bytes": row["imagegen"]["bytes"] - row["drop"]["bytes"],
                "import_s": round(row["drop"]["import"] - row["imagegen"]["import"], 3),
                "first_inference_s": round(row["drop"]["first_inference"] - row["imagegen"]["first_inference"], 3),
            }
        return row
    finally:
        for kind in ("naive", "drop"):
            if kind in images:
                try:
                    api.remove_image(images[kind], force=True)
                except Exception:  # noqa: BLE001
                    pass
        shutil.rmtree(work, ignore_errors=True)


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def table(rows: list[dict]) -> str:
    out = ["| cell | size (naive / imagegen / budget) | import: naive | import: imagegen | ratio | "
           "first inference: naive | first inference: imagegen | ratio | `bytecode: drop` instead |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, g = r["naive"], r["imagegen"]
        d = r.get("drop")
        drop = (f"{d['import']:.2f} s / {d['first_inference']:.2f} s, saves {mb(r['bytecode_rule']['bytes'])}"
                if d else "-")
        out.append(f"| `{r['cell']}` | {mb(n['bytes'])} / **{mb(g['bytes'])}** / {mb(r['budget'])} | "
                   f"{n['import']:.2f} s | **{g['import']:.2f} s** | {g['import'] / n['import']:.2f}× | "
                   f"{n['first_inference']:.2f} s | **{g['first_inference']:.2f} s** | "
                   f"{g['first_inference'] / n['first_inference']:.2f}× | {drop} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", action="append", help="selector (repeatable); default: the CPU cells")
    ap.add_argument("--runs", type=int, default=5, help="measured runs per image and figure (median; default 5)")
    ap.add_argument("--matrix", default=str(ROOT / "matrix.yaml"))
    ap.add_argument("--build-network", help="network mode for image builds (e.g. host, on a daemon started "
                                            "with --bridge=none); default: the engine's")
    args = ap.parse_args()
    if args.build_network:
        build_network(args.build_network)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    m = matrix.load(args.matrix)
    cells = m.select(args.cell or DEFAULT_CELLS)
    rows = []
    for c in cells:  # saved after every cell: a later failure keeps what was measured
        rows.append(bench_cell(m, c, args.runs))
        doc = coldstart.save(rows, ROOT / "bench" / "results-coldstart.json")
    print(table(doc["cells"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
