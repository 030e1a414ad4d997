#!/usr/bin/env python3
"""Rehearse the kernel prune inside a built GPU image, without building anything (issue 12).

Runs one throw-away container of IMAGE (no network, removed afterwards): copies its venv's `paddle`
and `nvidia` packages to /tmp, rewrites them with imagegen/scripts/fatprune.py for --targets, then,
with that copy first on PYTHONPATH/LD_LIBRARY_PATH, runs the Paddle smoke script (info, cpu),
dlopens every CUDA library by the name Paddle asks for, imports paddle and lists from /proc/self/maps
which library files were mapped (all must come from the pruned copy). Prints what it saw.

    python3 bench/fatprune_in_image.py paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim --targets sm_75
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INSIDE = r'''
import glob, json, os, shutil, subprocess, sys, time
targets = sys.argv[1]
t = time.time()
src = glob.glob("/opt/venv/lib/python3*/site-packages")[0]
for d in ("paddle", "nvidia"):
    shutil.copytree(f"{src}/{d}", f"/tmp/sp/{d}", symlinks=True)
r = subprocess.run([sys.executable, "/opt/fp/fatprune.py", "--root", "/tmp/sp", "--targets", targets],
                   capture_output=True, text=True)
print("fatprune rc", r.returncode, round(time.time() - t, 1), "s")
print(r.stderr[-4000:])
rep = json.loads(r.stdout.split(" ", 1)[1])
print("saved", rep["bytes"], "bytes; refused:", rep["refused"])
env = dict(os.environ, PYTHONPATH="/tmp/sp", HOME="/tmp",
           LD_LIBRARY_PATH=":".join(sorted(glob.glob("/tmp/sp/nvidia/*/lib")) + ["/tmp/sp/paddle/libs"]))
ok = r.returncode == 0
for mode in ("info", "cpu"):
    p = subprocess.run([sys.executable, "/opt/fp/smoke.py", mode], capture_output=True, text=True, env=env,
                       timeout=600, cwd="/tmp")
    print("smoke", mode, p.returncode, [l for l in p.stdout.splitlines() if l.startswith("IMAGEGEN-RESULT")][-1:])
    ok = ok and p.returncode == 0
code = """
import ctypes, json
for n in ["libcudnn.so.8", "libcublas.so.11", "libcublasLt.so.11", "libcudnn_ops_infer.so.8",
          "libcudnn_cnn_infer.so.8", "libcudnn_adv_infer.so.8", "libcurand.so.10"]:
    ctypes.CDLL(n, mode=2)
import paddle
maps = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libcu" in l or "libphi" in l or "libpaddle" in l})
print(json.dumps({"cuda": paddle.version.cuda(), "cudnn": paddle.version.cudnn(), "mapped": maps}))
"""
p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd="/tmp")
print("dlopen + import", p.returncode, p.stdout.strip()[-2000:], p.stderr[-500:] if p.returncode else "")
mapped = json.loads(p.stdout)["mapped"] if p.returncode == 0 else []
ok = ok and p.returncode == 0 and mapped and all(m.startswith("/tmp/sp/") for m in mapped)
print("REHEARSAL", "passed" if ok else "failed")
sys.exit(0 if ok else 1)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--targets", default="sm_75")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fatprune-rehearsal-") as d:
        for name in ("contract.py", "elfmini.py", "fatbin.py", "fatprune.py"):  # fatprune.py and its siblings
            shutil.copy(ROOT / "imagegen/scripts" / name, Path(d) / name)
        shutil.copy(ROOT / "imagegen/data/smoke/paddle.py", Path(d) / "smoke.py")
        (Path(d) / "inside.py").write_text(INSIDE)
        r = subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "0", "--label", "imagegen.test=1",
                            "-v", f"{d}:/opt/fp:ro", args.image, "python3.11", "/opt/fp/inside.py", args.targets],
                           timeout=1800)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
