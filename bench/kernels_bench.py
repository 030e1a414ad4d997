#!/usr/bin/env python3
"""Bench the CUDA fat-binary reader on a real library, against NVIDIA's cuobjdump, in one run.

    python bench/kernels_bench.py --wheel-of paddlepaddle-gpu --member paddle/libs/libphi.so [--with-wheel]
    python bench/kernels_bench.py --lib /path/to/libcublasLt.so.11

The wheel comes from the GPU flagship's lock through the project's wheel cache. For the library:
  stream-file   imagegen.cuda_kernels.scan_file   (1 MiB reads; what the audit does per file)
  stream-wheel  imagegen.cuda_kernels.scan_wheel  (inflating the wheel member; what `lock` does)
  mmap          fatbin.py LIB (find_section + parse_fatbin over an mmap; the builder-side parser)
  cuobjdump     cuobjdump --list-elf -arch sm_75 LIB (NVIDIA's tool, for scale)
Each runs in its own process; wall seconds and peak RSS (MB) are printed as a Markdown table,
with the per-architecture bytes the reader found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LOCK = ROOT / "locks" / "paddle-2.6.2-gpu-cuda11.8-cudnn8.6-slim.txt"


def measure(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MB of the child, stdout) for one command."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        fd = os.open(os.path.join(tempfile.gettempdir(), f"kb-{os.getpid()}.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.execvp(argv[0], argv)
    _, status, usage = os.wait4(pid, 0)
    secs = time.monotonic() - t0
    out_path = os.path.join(tempfile.gettempdir(), f"kb-{pid}.out")
    out = Path(out_path).read_text(errors="replace")
    os.unlink(out_path)
    if os.waitstatus_to_exitcode(status) != 0:
        out = f"(exit {os.waitstatus_to_exitcode(status)}) " + out[-300:]
    return secs, usage.ru_maxrss / 1024, out


def cuobjdump() -> str | None:
    from imagegen.cuda_kernels import cuobjdump_path

    found = cuobjdump_path()
    return str(found) if found else None


def wheel_path(name: str) -> Path:
    from imagegen import wheelhouse
    from imagegen.lockfile import read_lock

    lock = read_lock(LOCK)
    w = next(w for w in lock.wheels if w.key == name)
    [p] = wheelhouse.fetch(dataclasses.replace(lock, wheels=(w,), tools=()))
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", type=Path, help="a library file on disk")
    ap.add_argument("--wheel-of", help="distribution name in the flagship's lock (e.g. paddlepaddle-gpu)")
    ap.add_argument("--member", help="path of the library inside that wheel")
    ap.add_argument("--with-wheel", action="store_true", help="also time scan_wheel over the whole wheel")
    a = ap.parse_args()
    py = sys.executable
    env_pp = f"import sys; sys.path.insert(0, {str(ROOT)!r});"
    tmp = None
    whl = None
    if a.wheel_of:
        whl = wheel_path(a.wheel_of)
        tmp = Path(tempfile.mkdtemp(prefix="kernels-bench-"))
        lib = tmp / Path(a.member).name
        with zipfile.ZipFile(whl) as z, z.open(a.member) as src, open(lib, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        lib = a.lib
    try:
        rows = []
        code = (env_pp + "from imagegen import cuda_kernels as ck; import json;"
                f"l = ck.scan_file({str(lib)!r}); print(json.dumps(l.bytes_by_arch()))")
        secs, rss, out = measure([py, "-c", code])
        by_arch = json.loads(out.strip().splitlines()[-1])
        rows.append(("stream-file", secs, rss))
        if whl is not None and a.with_wheel:
            code = (env_pp + "from imagegen import cuda_kernels as ck;"
                    f"[l for l in ck.scan_wheel({str(whl)!r}) if l.path == {a.member!r}]")
            secs, rss, _ = measure([py, "-c", code])
            rows.append(("stream-wheel (all libraries of the wheel)", secs, rss))
        secs, rss, _ = measure([py, str(ROOT / "imagegen/scripts/fatbin.py"), str(lib)])
        rows.append(("mmap (fatbin.py)", secs, rss))
        cu = cuobjdump()
        if cu:
            secs, rss, out = measure([cu, "--list-elf", "-arch", "sm_75", str(lib)])
            rows.append((f"cuobjdump --list-elf -arch sm_75 ({out.count('.cubin')} cubins)", secs, rss))
        size = lib.stat().st_size
        print(f"{lib.name}: {size / 1e6:,.0f} MB file")
        print("| reader | seconds | peak RSS (MB) |\n|---|---|---|")
        for name, s, r in rows:
            print(f"| {name} | {s:.1f} | {r:.0f} |")
        print("\n| architecture | MB |\n|---|---|")
        for k, v in by_arch.items():
            print(f"| {k} | {v / 1e6:,.1f} |")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
