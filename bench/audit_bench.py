#!/usr/bin/env python3
"""Bench `imagegen audit` against `docker save IMAGE > /dev/null` in the same run.

    python bench/audit_bench.py --image paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim
    python bench/audit_bench.py --synthetic-gb 5        # builds, loads, measures, removes a 5 GB image

For each image: wall time and peak RSS of
  save        docker save IMAGE > /dev/null (the floor: the engine producing the stream)
  audit       imagegen audit IMAGE --no-compressed       (everything except gzip)
  audit+gz    imagegen audit IMAGE, empty gzip cache      (exact gzip -6 of every layer, all cores)
  audit+gz'   imagegen audit IMAGE, warm gzip cache       (sizes reused by diff_id)
Prints a Markdown table (docs/audit.md has the numbers measured here).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def run(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> tuple[float, int, int]:
    """(seconds, peak RSS in bytes, exit code) of a child process."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if p.returncode not in (0,):
        print(f"  ! {' '.join(argv[:6])} exited {p.returncode}: {err[-300:]}", file=sys.stderr)
    return dt, ru.ru_maxrss * 1024, p.returncode


def synthetic(gb: float, tmp: str) -> str:
    """A multi-GB image: incompressible data, compressible text, and copies of real .so files."""
    from imagegen.audit.synth import load, pattern, write_save_tar

    total = int(gb * 1e9)
    sos = sorted((p for p in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*") if os.path.isfile(p)
                  and not os.path.islink(p)), key=os.path.getsize, reverse=True)[:200]
    so_bytes = sum(os.path.getsize(p) for p in sos)

    def so_layer(round_: int) -> list[tuple]:
        out = []
        for p in sos:
            data = open(p, "rb").read()
            out.append(("file", f"/usr/local/lib/r{round_}/{os.path.basename(p)}", data))
        return out

    per = 512 << 20
    layers: list[list[tuple]] = []
    made = 0
    i = 0
    while made < total:
        kind = i % 3
        if kind == 2 and so_bytes:
            layers.append(so_layer(i))
            made += so_bytes
        else:
            n = min(per, total - made)
            files = [("file", f"/data/l{i}/f{j}", pattern(i * 100 + j, n // 8, random=kind == 0), n // 8)
                     for j in range(8)]
            layers.append(files)
            made += (n // 8) * 8
        i += 1
    tag = "imagegen-test/audit-bench:latest"
    path = os.path.join(tmp, "bench.tar")
    with open(path, "wb") as f:
        write_save_tar(f, layers, tag=tag, tmpdir=tmp)
    load(path)
    os.unlink(path)
    return tag


def bench(ref: str) -> dict:
    from imagegen import engine

    size = engine.api().inspect_image(ref)["Size"]
    cli = [sys.executable, "-m", "imagegen", "audit", ref, "--json"]
    res = {"image": ref, "size": size}
    docker = shutil.which("docker")
    if docker:
        res["save"] = run(["sh", "-c", f"docker save {ref} > /dev/null"])
    cache = tempfile.mkdtemp(prefix="imagegen-bench-cache-")
    try:
        res["audit"] = run(cli + ["--no-compressed"])
        res["audit+gz"] = run(cli, env={"IMAGEGEN_CACHE": cache})
        res["audit+gz warm"] = run(cli, env={"IMAGEGEN_CACHE": cache})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return res


def table(rows: list[dict]) -> str:
    out = ["| image | size | docker save | audit (no gzip) | audit + gzip, cold | audit + gzip, warm cache | peak RSS |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.get("save", (float("nan"), 0, 0))[0]

        def cell(k: str) -> str:
            t = r[k][0]
            return f"{t:.1f} s ({t / s:.2f}×)" if s == s else f"{t:.1f} s"
        rss = max(r[k][1] for k in ("audit", "audit+gz", "audit+gz warm"))
        out.append(f"| {r['image']} | {r['size'] / 1e9:.2f} GB | {s:.1f} s | {cell('audit')} | {cell('audit+gz')} | "
                   f"{cell('audit+gz warm')} | {rss / 1e6:.0f} MB |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", action="append", default=[], help="an existing local image (repeatable)")
    ap.add_argument("--synthetic-gb", type=float, default=0, help="build, bench and remove a synthetic image")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_make-synthetic", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._make_synthetic:
        synthetic(float(args._make_synthetic[0]), args._make_synthetic[1])
        return 0
    rows = []
    for ref in args.image:
        rows.append(bench(ref))
    if args.synthetic_gb:
        from imagegen import engine

        tmp = tempfile.mkdtemp(prefix="imagegen-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
        tag = None
        try:
            # built in a child process: the bench process must stay small, or forked children would
            # start with its pages and inflate the peak RSS measured for them
            subprocess.run([sys.executable, __file__, "--_make-synthetic", str(args.synthetic_gb), tmp], check=True)
            tag = "imagegen-test/audit-bench:latest"
            rows.append(bench(tag))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if tag:
                engine.api().remove_image(tag, force=True)
    if not rows:
        ap.error("give --image REF and/or --synthetic-gb N")
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    print(f"\n(cores: {os.cpu_count()}; gzip threads: {os.environ.get('IMAGEGEN_AUDIT_GZIP_THREADS', os.cpu_count())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
