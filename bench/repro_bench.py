#!/usr/bin/env python3
"""Reproducibility: two cold builds of one cell, per Docker engine and per builder path, and the time
`imagegen verify` takes against a cold build.

For each engine x cell x path, in one run:
  cold A, cold B   `imagegen build --variant CELL --force --no-cache --no-test` twice, under two
                   IMAGEGEN_LOCAL_PREFIXes, with no layer cache; imagegen's own cache (the wheelhouse,
                   whose wheels are checked against the lock's sha256 on every use) is shared, so a GPU
                   cell does not download 2.6 GB twice
  same?            `imagegen verify A --against B --json`: the two config digests, and when they differ
                   the first differing file
  verify           `imagegen verify A --allow-dirty --json`: a cold rebuild and the comparison, timed
                   (process start to exit), next to cold A's time
Engines and paths as in bench/engines_bench.py (host; docker26 and docker26-containerd from the Debian 13
rootfs; classic = DOCKER_BUILDKIT=0, buildkit = the rootfs's buildx plugin through a temporary
DOCKER_CONFIG). Every image is tagged under a per-run prefix and removed by that tag afterwards.

    python bench/repro_bench.py --engines host --paths classic,buildkit --cells onnxruntime:1.23.2-cpu-slim
    python bench/repro_bench.py --engines docker26,docker26-containerd --paths buildkit

Prints a Markdown table on stdout (logs on stderr) and writes --json (default bench/results-repro.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))
sys.path.insert(0, str(ROOT))

import engines_bench as eb  # noqa: E402

from imagegen import matrix  # noqa: E402

DEFAULT_CELLS = ("onnxruntime:1.23.2-cpu-slim", "paddle:3.3.1-cpu-slim")


def ig(args: list[str], env: dict[str, str], timeout: int = 3600) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return time.monotonic() - t0, r


def row(eng: eb.Engine, cell: matrix.Cell, path: str, cfg: Path | None, run_id: str, work: Path) -> dict:
    out: dict = {"engine": eng.name, "docker": eng.version, "store": eng.image_store, "cell": cell.ref, "path": path}
    refs = []
    try:
        cold = {}
        for side in ("a", "b"):
            prefix = f"imagegen-bench/repro-{run_id}-{side}/"
            env = eb.path_env(eng, path, cfg, prefix)
            env.update(NO_COLOR="1", PYTHONPATH=str(ROOT))
            seconds, r = ig(["build", "--variant", cell.ref, "--force", "--no-cache", "--no-test"], env)
            if r.returncode != 0:
                out["error"] = f"cold {side}: {eb.tail(r.stderr, 3)}"
                return out
            out["builder_seen"] = eb.builder_seen(r.stderr)[0]
            cold[side] = round(seconds, 1)
            refs.append((env, prefix + cell.ref))
            eb.log(f"{eng.name} {cell.ref} {path}: cold {side} {seconds:.1f} s")
        out["cold_a_s"], out["cold_b_s"] = cold["a"], cold["b"]
        env_a, ref_a = refs[0]
        _, r = ig(["verify", ref_a, "--against", refs[1][1], "--json"], env_a)
        v = json.loads(r.stdout) if r.stdout.strip() else {}
        out["config_a"], out["config_b"] = v.get("image_config_digest"), v.get("rebuilt_config_digest")
        out["same"] = v.get("status") == "reproduced"
        if not out["same"]:
            first = (v.get("diff") or {}).get("files") or []
            out["first_difference"] = (f"layer {first[0]['layer']}: {first[0]['path']}: {first[0]['what']}" if first
                                       else ", ".join((v.get("diff") or {}).get("config", [])[:3]) or r.stderr[-300:])
        seconds, r = ig(["verify", ref_a, "--allow-dirty", "--json"], env_a)
        v = json.loads(r.stdout) if r.stdout.strip() else {}
        out["verify_s"] = round(seconds, 1)
        out["verify_status"] = v.get("status") or eb.tail(r.stderr, 2)
        eb.log(f"{eng.name} {cell.ref} {path}: same={out['same']} verify {out['verify_status']} in {seconds:.1f} s")
        return out
    finally:
        api = eng.api()
        for _, ref in refs:
            eb.remove_tag(api, ref)


def table(rows: list[dict]) -> str:
    lines = ["| engine | cell | path | cold A (s) | cold B (s) | same config digest | first difference | "
             "verify (s) | verify |", "|---|---|---|---:|---:|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} (Docker {r['docker']}, {r['store']}) | {r['cell']} | {r['path']} | "
                     f"{r.get('cold_a_s', '')} | {r.get('cold_b_s', '')} | "
                     f"{'yes ' + (r.get('config_a') or '')[7:19] if r.get('same') else 'no'} | "
                     f"{r.get('first_difference', r.get('error', ''))} | {r.get('verify_s', '')} | "
                     f"{r.get('verify_status', '')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="host", help=f"comma-separated, of: {', '.join(eb.ENGINES)}")
    ap.add_argument("--cells", default=",".join(DEFAULT_CELLS))
    ap.add_argument("--paths", default=",".join(eb.PATHS))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results-repro.json"))
    args = ap.parse_args()
    engines = eb.csv_choice(args.engines, eb.ENGINES, "engines")
    paths = eb.csv_choice(args.paths, eb.PATHS, "paths")
    m = matrix.load(ROOT / "matrix.yaml")
    cells = m.select([c.strip() for c in args.cells.split(",") if c.strip()])
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="imagegen-bench-repro-"))
    cfg = None
    rows: list[dict] = []
    try:
        rootfs = None
        if any(e != "host" for e in engines) or "buildkit" in paths:
            from second_engine import newer_engine_rootfs

            rootfs = newer_engine_rootfs()
        if "buildkit" in paths:
            cfg = eb.buildx_config(rootfs)
        base_refs = []
        if any(e != "host" for e in engines):
            from imagegen import bases

            for cell in cells:
                for role in ("builder", cell.runtime_role):
                    ref = bases.ensure_role(cell.base, role, spec=cell.base_spec)
                    if ref not in base_refs:
                        base_refs.append(ref)
        for name in engines:
            with eb.started(name, base_refs, rootfs) as eng:
                for cell in cells:
                    for path in paths:
                        rows.append(row(eng, cell, path, cfg, run_id, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cfg is not None:
            shutil.rmtree(cfg, ignore_errors=True)
    Path(args.json).write_text(json.dumps({"run": {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, "rows": rows},
                                          indent=2) + "\n")
    print(table(rows))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
