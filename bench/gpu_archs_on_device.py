#!/usr/bin/env python3
"""On a machine with an NVIDIA GPU and PyTorch: does imagegen's answer to "which GPUs does this
run on?" agree with the GPU itself? Self-checking; exit 0 only when every check passes.

    python3 bench/gpu_archs_on_device.py [--json OUT.json]

Needs only the standard library, this repository and the installed PyTorch (PyYAML optional).
Checks, in one run:
  1. the host's compute capability from `nvidia-smi --query-gpu=compute_cap` equals
     torch.cuda.get_device_capability() (the value the image smoke test reads);
  2. imagegen's reader (imagegen.cuda_kernels, streaming) reads every CUDA library of the installed
     PyTorch (torch/lib and nvidia/*/lib) without a warning, and its answer (imagegen.gpu_archs) says
     the host's GPU is served by every library;
  3. the architectures libtorch_cuda.so ships (SASS + PTX, by the reader) equal
     torch.cuda.get_arch_list(), PyTorch's own record of what it was compiled for;
  4. the answer is true: a GEMM and a convolution run on the GPU and match the CPU result.
Prints per-library kernel bytes by architecture, the reader's timing, and the verdicts.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagegen import cuda_kernels as ck  # noqa: E402
from imagegen import gpu_archs as ga  # noqa: E402


def _gpu_data_without_yaml() -> dict:
    """The few keys of imagegen/data/gpus.yaml this script needs, when PyYAML is not installed."""
    text = (Path(ga.__file__).resolve().parent / "data" / "gpus.yaml").read_text()
    ccs = {m.group(1): "" for m in re.finditer(r"^  (sm_\d+):", text, re.M)}
    share = float(re.search(r"^min_container_share:\s*([\d.]+)", text, re.M).group(1))
    feats = {m.group(1): "" for m in re.finditer(r'^  "([^"]+)":', text.split("feature_libraries:", 1)[1], re.M)}
    return {"compute_capabilities": ccs, "min_container_share": share, "feature_libraries": feats}


try:
    import yaml  # noqa: F401
except ImportError:
    ga.gpu_data = _gpu_data_without_yaml  # type: ignore[assignment]


def smi_capability() -> list[int]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(a) * 10 + int(b) for a, b in re.findall(r"(\d+)\.(\d)", out)]


def cuda_libraries(torch_dir: Path) -> list[Path]:
    site = torch_dir.parent
    out = []
    for d in [torch_dir / "lib", *sorted(site.glob("nvidia/*/lib")), *sorted(site.glob("nvidia/cu*/lib"))]:
        for p in sorted(d.glob("*.so*")) if d.is_dir() else []:
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args()
    failures: list[str] = []
    result: dict = {}

    import torch

    result["torch"] = torch.__version__
    result["torch_cuda"] = torch.version.cuda
    if not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False (no GPU, or no driver)")
        return 1
    major, minor = torch.cuda.get_device_capability(0)
    cc = major * 10 + minor
    result["device"] = torch.cuda.get_device_name(0)
    result["compute_capability"] = f"{major}.{minor}"
    smi = smi_capability()
    result["nvidia_smi_compute_cap"] = [f"{c // 10}.{c % 10}" for c in smi]
    if smi[:1] != [cc]:
        failures.append(f"nvidia-smi says {result['nvidia_smi_compute_cap']}, torch says {major}.{minor}")

    # 2. the reader over the installed PyTorch's CUDA libraries
    torch_dir = Path(torch.__file__).resolve().parent
    warnings: list[str] = []
    t0 = time.monotonic()
    scanned = 0
    libs = []
    for p in cuda_libraries(torch_dir):
        scanned += p.stat().st_size
        lib = ck.scan_file(p, str(p.relative_to(torch_dir.parent)), warn=warnings.append)
        if lib is not None:
            libs.append(lib)
    secs = time.monotonic() - t0
    result["reader"] = {"files_bytes": scanned, "seconds": round(secs, 2),
                        "MB_per_s": round(scanned / 1e6 / secs, 1) if secs else None,
                        "libraries_with_kernels": len(libs), "warnings": warnings}
    if warnings:
        failures.append(f"reader warnings: {warnings}")
    report = ga.image_report(libs) or {}
    runs_on = report.get("runs_on", {})
    result["runs_on"] = runs_on
    result["label"] = report.get("label")
    facts = {f["path"]: f for f in (ga.library_facts(lib) for lib in libs)}
    not_served = [path for path, f in facts.items() if not f["warning"] and not ga.serves(f, cc)
                  and path not in runs_on.get("feature_libraries", {})]
    result["libraries_without_a_path_for_this_gpu"] = not_served
    verdict = not not_served
    result["imagegen_says_runs"] = verdict
    # container-level detail: what share of each library's containers has a kernel path here
    from imagegen.scripts import fatbin as fb
    result["container_paths"] = {
        lib.path: f"{sum(1 for c in lib.containers if fb.runs_on(c.entries, cc))}/{len(lib.containers)}"
        for lib in libs}

    # 3. libtorch_cuda's shipped architectures against torch.cuda.get_arch_list()
    tc = next((f for p, f in facts.items() if Path(p).name.startswith("libtorch_cuda")), None)
    if tc is not None:
        ours = sorted(ga.shipped(tc), key=fb.name_key)
        theirs = sorted(torch.cuda.get_arch_list(), key=fb.name_key)
        result["libtorch_cuda_ships"] = ours
        result["torch_arch_list"] = theirs
        if set(ours) != set(theirs):
            failures.append(f"libtorch_cuda ships {ours} by the reader, torch.cuda.get_arch_list() says {theirs}")
    else:
        failures.append("no libtorch_cuda*.so with CUDA kernels found under torch/lib")

    # 4. the truth: kernels launch on this GPU
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 256, generator=g)
        y = torch.randn(256, 256, generator=g)
        gemm = (x.cuda() @ y.cuda()).cpu()
        conv = torch.nn.functional.conv2d(x[None, None], y[None, None, :3, :3].contiguous())
        conv_gpu = torch.nn.functional.conv2d(x[None, None].cuda(), y[None, None, :3, :3].contiguous().cuda()).cpu()
        torch.cuda.synchronize()
        ran = bool(torch.allclose(gemm, x @ y, rtol=1e-3, atol=1e-2) and torch.allclose(conv, conv_gpu, rtol=1e-3, atol=1e-2))
        result["kernels_ran"] = ran
    except RuntimeError as exc:
        ran = False
        result["kernels_ran"] = f"error: {exc}"
    if verdict != ran:
        failures.append(f"imagegen says runs={verdict}, the GPU says runs={ran}")

    # table
    names = list(report.get("by_arch", {}))
    print(f"{result['device']} (compute capability {major}.{minor}); torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"reader: {scanned / 1e6:,.0f} MB of libraries in {secs:.1f} s")
    print("| library | .nv_fatbin | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in report.get("libraries", []):
        cells = [f"{row['bytes'][n] / 1e6:,.1f}" if row["bytes"].get(n) else "" for n in names]
        print(f"| {row['path']} | {row['fatbin_bytes'] / 1e6:,.1f} MB | " + " | ".join(cells) + " |")
    print(f"runs on (every library): {result['label']}")
    print(f"this GPU sm_{cc}: imagegen says {'runs' if verdict else 'does not run'}; kernels ran: {ran}")
    result["failures"] = failures
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    for f in failures:
        print(f"FAIL: {f}")
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
