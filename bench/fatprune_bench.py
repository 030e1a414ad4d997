#!/usr/bin/env python3
"""Arch-targeted images, side by side (issue 12): the GPU flagship and its sm_75 twin.

Builds both cells (a no-op when the tags hold the same inputs), then prints their engine sizes,
optionally the gzip size of their layers (`imagegen audit`, slow on GB images), and the kernel
prune's bytes per library from the twin's prune report (/etc/imagegen/prune-report.json, read
from the image's layers with `docker save`). Hold the engine lock while it runs:

    flock /work/locks/engine.lock python3 bench/fatprune_bench.py [--compressed] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = {"flagship": "gpu-cuda11.8-slim", "sm75": "gpu-cuda11.8-sm75-slim"}
OFFICIAL = "official Paddle GPU images: 21-28 GB (paddlepaddle/paddle:*-gpu-cuda11.8-*)"


def imagegen(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"imagegen {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r


def prune_report(ref: str) -> dict | None:
    """/etc/imagegen/prune-report.json from the image's layers (no container: slim images have no shell)."""
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    found = None
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for m in outer:
            if not m.name.endswith("layer.tar") and "blobs/" not in m.name:
                continue
            data = outer.extractfile(m)
            if data is None:
                continue
            try:
                with tarfile.open(fileobj=io.BytesIO(data.read()) if m.size < 50_000_000 else data, mode="r|*") as t:
                    for x in t:
                        if x.name.lstrip("./") == "etc/imagegen/prune-report.json":
                            found = json.loads(t.extractfile(x).read())
            except tarfile.TarError:
                continue
    save.wait()
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compressed", action="store_true", help="also gzip sizes (imagegen audit; minutes)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    out: dict = {"official": OFFICIAL}
    for name, sel in CELLS.items():
        (res,) = json.loads(imagegen("build", "--variant", sel, "--json").stdout)
        ref = res["ref"]
        info = json.loads(subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True,
                                         check=True).stdout)[0]
        row = {"ref": ref, "size": info["Size"], "archs": info["Config"]["Labels"].get("io.imagegen.cuda.archs")}
        if args.compressed:
            audit = json.loads(imagegen("audit", ref, "--json").stdout)
            row["compressed"] = audit["totals"]["compressed"]
        out[name] = row
    rep = prune_report(out["sm75"]["ref"]) or {}
    rule = (rep.get("rules") or {}).get("cuda_archs") or {}
    out["libraries"] = {k: {"before": v["bytes_before"], "after": v["bytes_after"], "status": v["status"]}
                        for k, v in (rule.get("libraries") or {}).items() if v["status"] != "no-fatbin"}
    out["kernel_prune_bytes"] = rule.get("bytes")
    print(f"{'image':50} {'size':>10} {'gzip':>10}  io.imagegen.cuda.archs")
    for name in CELLS:
        r = out[name]
        gz = f"{r['compressed'] / 1e6:,.0f} MB" if "compressed" in r else "-"
        print(f"{r['ref']:50} {r['size'] / 1e6:>7,.0f} MB {gz:>10}  {r['archs']}")
    print(OFFICIAL)
    for k, v in sorted(out["libraries"].items(), key=lambda kv: -kv[1]["before"]):
        print(f"  {k:70} {v['before'] / 1e6:>8,.0f} MB -> {v['after'] / 1e6:>6,.0f} MB  {v['status']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
