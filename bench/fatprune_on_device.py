#!/usr/bin/env python3
"""GPU check for arch-targeted images (issue 12): do pruned CUDA libraries still compute the same?

For a machine with an NVIDIA GPU and PyTorch installed with NVIDIA's CUDA wheels (nvidia-cublas-*,
nvidia-cudnn-*), no Docker and no network needed. A few minutes:

1. reads the GPU's compute capability (torch.cuda.get_device_capability in a child process);
2. makes a private copy of the installation's `torch` and `nvidia` packages (hard links where the
   filesystem allows, so the originals are never written) and rewrites, in that copy only, cuBLAS,
   cuBLASLt and every cuDNN library with imagegen/scripts/fatprune.py to the GPU's architecture
   (each rewrite verified: layout, relocations, kept entries byte for byte, dlopen);
3. runs the same workload twice, in fresh processes: against the original installation, and with
   the copy first on sys.path (torch's RPATH and its preloader then load the pruned libraries; the
   child checks /proc/self/maps to prove which files it really mapped). The workload is GEMMs
   (fp32, fp16, bf16, and a fused bias epilogue through cuBLASLt) and convolutions through cuDNN
   (fp32, fp16, forward and backward);
4. compares the results (max abs difference; identical kernels should give identical bits) and
   prints one JSON report. Exit 0: every check passed; 1: a check failed; 77: no usable GPU.

    python3 bench/fatprune_on_device.py [--keep DIR] [--also-torch] [--json-out FILE]
    python3 bench/fatprune_on_device.py --prune-only --cc 75 --libs DIR   # no GPU: prune + verify a dir

Until this has passed on a GPU, `gpu_archs` pruning is labelled experimental.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "imagegen" / "scripts"))
import fatprune  # noqa: E402  (stdlib only: runs without imagegen's dependencies)

PRUNE_GLOBS = ("nvidia/cublas/lib/libcublas*.so*", "nvidia/cudnn/lib/libcudnn*.so*")
TORCH_GLOBS = ("torch/lib/libtorch_cuda*.so", "torch/lib/libc10_cuda.so")

WORKLOAD = r'''
import json, os, sys, hashlib
import torch
torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.deterministic = True
dev = "cuda"
out = {}
def put(name, t):
    t = t.detach().float().cpu().contiguous()
    out[name] = t
g = torch.Generator(device="cpu").manual_seed(1234)
A = torch.randn(1024, 768, generator=g); B = torch.randn(768, 512, generator=g); bias = torch.randn(512, generator=g)
for dt in (torch.float32, torch.float16, torch.bfloat16):
    a, b = A.to(dev, dt), B.to(dev, dt)
    put(f"gemm_{dt}", a @ b)
    put(f"gemm_bias_{dt}", torch.nn.functional.linear(a, b.t().contiguous(), bias.to(dev, dt)))
    put(f"bmm_{dt}", torch.bmm(a.view(4, 256, 768), b.unsqueeze(0).expand(4, 768, 512).contiguous()))
x = torch.randn(8, 32, 56, 56, generator=g); w = torch.randn(64, 32, 3, 3, generator=g)
for dt in (torch.float32, torch.float16):
    xi = x.to(dev, dt).requires_grad_(True); wi = w.to(dev, dt).requires_grad_(True)
    y = torch.nn.functional.conv2d(xi, wi, padding=1)
    put(f"conv_{dt}", y)
    y.float().square().sum().backward()
    put(f"conv_dx_{dt}", xi.grad); put(f"conv_dw_{dt}", wi.grad)
torch.cuda.synchronize()
maps = open("/proc/self/maps").read().split("\n")
libs = sorted({l.split()[-1] for l in maps if (".so" in l and ("cublas" in l or "cudnn" in l or "libtorch_cuda" in l))})
torch.save(out, sys.argv[1])
print(json.dumps({"libs": libs, "cudnn": torch.backends.cudnn.version(), "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(), "results": sorted(out)}))
'''


def run(cmd: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def site_of_torch() -> Path:
    r = run([sys.executable, "-c", "import torch, pathlib; print(pathlib.Path(torch.__file__).parent.parent)"])
    if r.returncode != 0:
        raise SystemExit(f"no PyTorch here: {r.stderr.strip()[-300:]}")
    return Path(r.stdout.strip())


def compute_capability() -> int | None:
    r = run([sys.executable, "-c", "import torch; print(*torch.cuda.get_device_capability()) "
             "if torch.cuda.is_available() else print('none')"])
    if r.returncode != 0:
        raise SystemExit(f"PyTorch does not import here: {r.stderr.strip()[-300:]}")
    if r.stdout.strip() in ("", "none"):
        return None
    major, minor = r.stdout.split()
    return int(major) * 10 + int(minor)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a tree with hard links where possible (fatprune writes a new file and renames it over
    the link, so the original inode is never modified)."""
    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


def prune_dir(root: Path, globs: tuple[str, ...], cc: int) -> dict:
    env = fatprune.load_env(root)
    out = {}
    for g in globs:
        for p in sorted(root.glob(g)):
            if p.is_symlink() or not p.is_file():
                continue
            t = time.monotonic()
            rec = fatprune.prune_file(p, [f"sm_{cc}"], False, load_env=env)
            rec["seconds"] = round(time.monotonic() - t, 1)
            out[str(p.relative_to(root))] = rec
    return out


def compare(a_file: Path, b_file: Path) -> dict:
    code = ("import torch, json, sys\na=torch.load(sys.argv[1]); b=torch.load(sys.argv[2])\n"
            "r={k: {'max_abs_diff': float((a[k]-b[k]).abs().max()), 'identical': bool(torch.equal(a[k], b[k])),"
            " 'scale': float(a[k].abs().max())} for k in a}\nprint(json.dumps(r))")
    r = run([sys.executable, "-c", code, str(a_file), str(b_file)])
    if r.returncode != 0:
        raise SystemExit(f"comparison failed: {r.stderr[-500:]}")
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one, removed)")
    ap.add_argument("--also-torch", action="store_true", help="prune libtorch_cuda too")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--prune-only", action="store_true", help="no GPU: prune and verify the libraries under --libs")
    ap.add_argument("--libs", type=Path, help="with --prune-only: a directory of CUDA libraries")
    ap.add_argument("--cc", type=int, help="with --prune-only: compute capability, e.g. 75")
    args = ap.parse_args()

    if args.prune_only:
        if not args.libs or not args.cc:
            ap.error("--prune-only needs --libs DIR and --cc N")
        work = Path(tempfile.mkdtemp(prefix="fatprune-dev-"))
        try:
            link_tree(args.libs, work / "libs")
            rep = prune_dir(work / "libs", ("*.so*",), args.cc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(rep, indent=1, sort_keys=True))
        return 0 if all(r["status"] in ("pruned", "no-fatbin", "unchanged") for r in rep.values()) else 1

    cc = compute_capability()
    if cc is None:
        print(json.dumps({"status": "skipped", "reason": "no NVIDIA GPU visible to PyTorch"}))
        return 77
    site = site_of_torch()
    if not (site / "nvidia").is_dir():
        raise SystemExit(f"{site}/nvidia not found: this check needs PyTorch with NVIDIA's pip CUDA wheels")
    work = args.keep or Path(tempfile.mkdtemp(prefix="fatprune-dev-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"compute_capability": cc, "target": f"sm_{cc}", "site_packages": str(site)}
    ok = True
    try:
        t0 = time.monotonic()
        pruned = work / "site"
        if pruned.exists():
            shutil.rmtree(pruned)
        pruned.mkdir()
        for name in ("torch", "nvidia"):
            link_tree(site / name, pruned / name)
        report["copy_seconds"] = round(time.monotonic() - t0, 1)
        globs = PRUNE_GLOBS + (TORCH_GLOBS if args.also_torch else ())
        libs = prune_dir(pruned, globs, cc)
        report["libraries"] = libs
        report["bytes_saved"] = sum(r["bytes_before"] - r["bytes_after"] for r in libs.values())
        if not any(r["status"] == "pruned" for r in libs.values()):
            ok = False
            report["problem"] = "no library was pruned"
        script = work / "workload.py"
        script.write_text(WORKLOAD)
        runs = {}
        for label, extra in (("original", None), ("pruned", str(pruned))):
            env = dict(os.environ)
            env.pop("LD_LIBRARY_PATH", None)
            if extra:
                env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            t = time.monotonic()
            r = run([sys.executable, str(script), str(work / f"{label}.pt")], env=env)
            if r.returncode != 0:
                ok = False
                runs[label] = {"rc": r.returncode, "stderr": r.stderr[-2000:]}
                continue
            info = json.loads(r.stdout.strip().splitlines()[-1])
            info["seconds"] = round(time.monotonic() - t, 1)
            runs[label] = info
        report["runs"] = runs
        if all("libs" in runs.get(k, {}) for k in ("original", "pruned")):
            mapped = runs["pruned"]["libs"]
            pruned_names = {Path(k).name for k, r in libs.items() if r["status"] == "pruned"}
            from_copy = [m for m in mapped if m.startswith(str(pruned))]
            report["pruned_libs_mapped"] = sorted(Path(m).name for m in from_copy)
            if not from_copy or not ({Path(m).name for m in from_copy} & pruned_names):
                ok = False
                report["problem"] = "the pruned run did not map the pruned libraries"
            if any(m.startswith(str(site / "nvidia")) for m in mapped):
                ok = False
                report["problem"] = "the pruned run also mapped original NVIDIA libraries"
            cmp = compare(work / "original.pt", work / "pruned.pt")
            report["compare"] = cmp
            for name, c in cmp.items():
                tol = 1e-5 * max(1.0, c["scale"])
                if not c["identical"] and c["max_abs_diff"] > tol:
                    ok = False
                    report.setdefault("mismatches", []).append(name)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["status"] = "passed" if ok else "failed"
    text = json.dumps(report, indent=1, sort_keys=True)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
