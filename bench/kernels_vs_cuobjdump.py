#!/usr/bin/env python3
"""Per-architecture entry counts of imagegen's fat-binary reader against `cuobjdump --list-elf` /
`--list-ptx -arch sm_XX` (NVIDIA's tool, PyPI `nvidia-cuda-cuobjdump`), on NVIDIA libraries from the
GPU flagship's lock (fetched through the project's wheel cache). Prints a Markdown table.

    python bench/kernels_vs_cuobjdump.py            # cuBLAS 11.11 (both libraries) and cuDNN 8.6 cnn_infer

cuobjdump 13 refuses -arch below sm_75 ("not defined for option 'gpu-architecture'"): those cells
read "refused", never agreement.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagegen import cuda_kernels as ck  # noqa: E402
from imagegen import wheelhouse
from imagegen.lockfile import read_lock  # noqa: E402

LOCK = ROOT / "locks" / "paddle-2.6.2-gpu-cuda11.8-cudnn8.6-slim.txt"
TARGETS = [("nvidia-cublas-cu11", "nvidia/cublas/lib/libcublas.so.11"),
           ("nvidia-cublas-cu11", "nvidia/cublas/lib/libcublasLt.so.11"),
           ("nvidia-cudnn-cu11", "nvidia/cudnn/lib/libcudnn_cnn_infer.so.8")]
ARCHS = ["sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]


def cuobjdump() -> str:
    found = ck.cuobjdump_path()
    if found is None:
        raise SystemExit("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    return str(found)


def listing(kind: str, arch: str, lib: Path) -> Counter | None:
    r = subprocess.run([cuobjdump(), f"--list-{kind}", "-arch", arch, str(lib)], capture_output=True, text=True)
    if r.returncode != 0 or "fatal" in (r.stdout + r.stderr).lower():
        return None
    return Counter(re.findall(rf"\.(sm_\d+[af]?)\.{'cubin' if kind == 'elf' else 'ptx'}$", r.stdout, re.M))


def main() -> int:
    lock = read_lock(LOCK)
    tmp = Path(tempfile.mkdtemp(prefix="kernels-vs-cuobjdump-"))
    try:
        print("| library | " + " | ".join(ARCHS) + " | PTX |")
        print("|---|" + "---|" * (len(ARCHS) + 1))
        for dist, member in TARGETS:
            w = next(w for w in lock.wheels if w.key == dist)
            [whl] = wheelhouse.fetch(dataclasses.replace(lock, wheels=(w,), tools=()))
            lib = tmp / Path(member).name
            with zipfile.ZipFile(whl) as z, z.open(member) as src, open(lib, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            inv = ck.scan_file(lib, warn=None)
            sass = Counter(e.name for e in inv.entries if e.kind == "sass")
            ptx = Counter(e.name for e in inv.entries if e.kind == "ptx")
            cells = []
            for arch in ARCHS:
                theirs = listing("elf", arch, lib)
                ours = sass.get(arch, 0)
                cells.append(f"{ours} / refused" if theirs is None else
                             (f"{ours} = {theirs.get(arch, 0)}" if ours == theirs.get(arch, 0) else f"**{ours} ≠ {theirs.get(arch, 0)}**"))
            pcells = []
            for name, n in sorted(ptx.items()):
                theirs = listing("ptx", "sm_" + name.split("_", 1)[1], lib)
                got = None if theirs is None else theirs.get("sm_" + name.split("_", 1)[1], 0)
                pcells.append(f"{name} {n} / refused" if got is None else (f"{name} {n} = {got}" if got == n else f"**{name} {n} ≠ {got}**"))
            print(f"| {lib.name} | " + " | ".join(cells) + f" | {', '.join(pcells) or 'none'} |")
            lib.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nCells: entries found by imagegen's reader = entries cuobjdump lists for that -arch.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
