"""GPU readiness without a GPU (runs INSIDE the image): is every CUDA library the framework
loads dlopen-able by the exact name the framework asks for, the way the framework loads it?

A load counts as good only when dlopen succeeds AND no dlerror() is left pending afterwards:
cuDNN >= 8.7 dlopens the unversioned libnvrtc.so from inside its own loading, ignores the
failure, and aborts at the first convolution (pytorch#97041); with glibc >= 2.35 that error stays
pending in dlerror(), which ctypes never reads. The nvidia wheels' libraries are probed by the
DT_SONAME read from each file (elfmini), never by a name guessed from the file name.

usage: python gpu.py NAME [NAME ...]      names from the framework's data (gpu.dlopen)
       python gpu.py --nvidia-sonames     the versioned sonames of every library in the
                                          nvidia/*/lib directories of the installed wheels
Each name is loaded in its own child process with a timeout: a failing cuDNN load can abort the
process. Prints one JSON line: {"results": [{name, ok, error, path, version}]}.
"""
import glob
import json
import os
import site
import subprocess
import sys

import elfmini  # copied next to this probe (stdlib only)

TIMEOUT = float(os.environ.get("IMAGEGEN_DLOPEN_TIMEOUT", "60"))

CHILD = r'''
import ctypes, json, os, sys
name = sys.argv[1]
res = {"name": name, "ok": False, "error": None, "path": None, "version": None}
libc = ctypes.CDLL(None)
dlerror = libc.dlerror          # looked up before the load under test, so no dlsym clears it after
dlerror.restype = ctypes.c_char_p
dlerror()                       # start with nothing pending


def pending(what):
    msg = dlerror()
    if msg:
        res["ok"] = False
        res["error"] = "%s, but a dlopen inside it failed and is still pending in dlerror(): %s" % (
            what, msg.decode("utf-8", "replace"))
        return True
    return False


try:
    lib = ctypes.CDLL(name)
    res["ok"] = True
    pending("loaded")
except OSError as exc:
    res["error"] = str(exc)
if res["ok"]:
    with open("/proc/self/maps") as fh:
        for line in fh:
            p = line.split()[-1]
            if "/" in p and os.path.basename(p).startswith(name.split(".so")[0] + ".so"):
                res["path"] = os.path.realpath(p)
                break
    # libraries that report their own version (cuDNN): a real call, which also makes cuDNN 8
    # load its sub-libraries (libcudnn_ops_infer.so.8 ...) the way a framework does
    for sym in ("cudnnGetVersion",):
        if hasattr(lib, sym):
            fn = getattr(lib, sym)
            fn.restype = ctypes.c_size_t
            v = int(fn())
            major = v // 10000 if v >= 90000 else v // 1000
            minor = (v % 10000) // 100 if v >= 90000 else (v % 1000) // 100
            res["version"] = "%d.%d.%d" % (major, minor, v % 100)
            pending("%s() ran" % sym)
print(json.dumps(res))
'''


def nvidia_sonames():
    """The DT_SONAME of every shared library in the nvidia/*/lib directories of the installed
    wheels (the name the dynamic loader and the frameworks use), in a stable order."""
    names = []
    dirs = site.getsitepackages() + [p for p in sys.path if p.endswith("-packages")]
    for sp in dict.fromkeys(dirs):
        for path in sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib", "lib*.so*"))):
            if os.path.islink(path):
                continue
            try:
                soname = elfmini.read_file(path).soname
            except (OSError, ValueError):
                continue
            if soname and soname not in names:
                names.append(soname)
    return names


def probe(name):
    try:
        cp = subprocess.run([sys.executable, "-c", CHILD, name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"name": name, "ok": False, "error": "timed out after %gs (hung after a failed load?)" % TIMEOUT}
    line = cp.stdout.decode(errors="replace").strip().splitlines()
    if cp.returncode == 0 and line:
        return json.loads(line[-1])
    err = cp.stderr.decode(errors="replace").strip().splitlines()
    return {"name": name, "ok": False,
            "error": "process died with %s: %s" % (cp.returncode, err[-1] if err else "")}


def main():
    args = sys.argv[1:]
    names = nvidia_sonames() if args == ["--nvidia-sonames"] else args
    print("IMAGEGEN-RESULT " + json.dumps({"results": [probe(n) for n in names]}))


if __name__ == "__main__":
    main()
