"""GPU readiness without a GPU (runs INSIDE the image): does every CUDA library the framework loads
load, by the name it is asked for, with no error left pending?

usage: python gpu.py [--dirs GLOB,...] [--needed-of REL]... [--skip NAME]... [NAME ...]
  NAME               a name the framework dlopens itself (data: gpu.dlopen), e.g. libcudnn.so
  --dirs GLOB,...    also every shared library in these site-packages directories (e.g.
                     nvidia/*/lib,tensorrt_libs), by the DT_SONAME read from its ELF file
  --needed-of REL    also every NEEDED entry of this library (relative to site-packages), e.g. an
                     execution provider the framework dlopens by path; an entry its RUNPATH
                     resolves is loaded from there, as the loader does for it
  --timeout SECONDS  how long one library's dlopen may take (default 60)
  --skip NAME        never probe NAME (libraries the host driver provides: libcuda.so.1); a library
                     that fails only because NAME is absent passes when every other NEEDED entry of
                     its ELF file loads (reported with "needs_host")
  --nvidia-sonames   the same as --dirs 'nvidia/*/lib'
  --benign TEXT      a pending dlerror() message containing TEXT is reported ("pending_benign"), not
                     failed: data (cuda.yaml dlerror_benign) for a library's own by-design lookups,
                     and the host driver's libraries (cuBLASLt 13 dlopens libcuda.so.1 as it loads)
Each name is loaded in its own child process with a timeout: a failing cuDNN load can abort the
process. A load that succeeds but leaves an error pending in dlerror() fails too: cuDNN >= 8.7
dlopens libnvrtc.so from its constructor, ignores the failure, and aborts at the first convolution
(pytorch#97041); ctypes never looks. Prints one JSON line: {"results": [{name, ok, error, path,
version}], "skipped": [...]}. Names come from the ELF files, never from file names (libnvrtc.so.11.2
has the SONAME libnvrtc.so.11.2, not libnvrtc.so.11).
"""
import glob
import json
import os
import site
import subprocess
import sys

import elfmini  # copied next to this probe (stdlib only; imagegen/scripts/elfmini.py)

TIMEOUT = 60.0  # seconds per dlopen child; --timeout (the host's IMAGEGEN_DLOPEN_TIMEOUT) replaces it

CHILD = r'''
import ctypes, json, os, sys
name = sys.argv[1]
load = sys.argv[2] or name  # a file path when the dependent's RUNPATH resolves the name
benign = [b for b in sys.argv[3:] if b]
res = {"name": name, "ok": False, "error": None, "path": None, "version": None}
libc = ctypes.CDLL(None)
dlerror = libc.dlerror
dlerror.restype = ctypes.c_char_p
dlerror()  # clear whatever is pending before the load
try:
    lib = ctypes.CDLL(load)
    res["ok"] = True
except OSError as exc:
    res["error"] = str(exc)
def check_pending(what):
    pending = dlerror()
    if pending:
        msg = pending.decode(errors="replace")
        if any(b in msg for b in benign):
            res["pending_benign"] = msg
        else:
            res["ok"] = False
            res["error"] = what + " a dlopen inside it failed and is still pending in dlerror(): " + msg
if res["ok"]:
    check_pending("loaded, but")
if res["ok"]:
    stem = name.split(".so")[0] + ".so"
    with open("/proc/self/maps") as fh:
        for line in fh:
            p = line.split()[-1]
            if "/" in p and os.path.basename(p).startswith(stem):
                res["path"] = os.path.realpath(p)
                break
    # libraries that report their own version (cuDNN): a real call, which also makes cuDNN load its
    # sub-libraries (libcudnn_ops_infer.so.8, libcudnn_graph.so.9 ...) the way a framework does
    if hasattr(lib, "cudnnGetVersion"):
        fn = lib.cudnnGetVersion
        fn.restype = ctypes.c_size_t
        v = int(fn())
        major = v // 10000 if v >= 90000 else v // 1000
        minor = (v % 10000) // 100 if v >= 90000 else (v % 1000) // 100
        res["version"] = "%d.%d.%d" % (major, minor, v % 100)
        check_pending("after cudnnGetVersion,")
print(json.dumps(res))
'''


def elf_dynamic(path):
    """(soname, [needed]) of an ELF file, read by elfmini; (None, []) if it is not one."""
    try:
        elf = elfmini.read_file(path)
    except (OSError, ValueError):
        return None, []
    return elf.soname, list(elf.needed)


def search_dirs(path):
    """The directories the loader searches first for `path`'s NEEDED entries: its DT_RUNPATH (or,
    without one, DT_RPATH), with $ORIGIN expanded. ld.so(8): "Using the directories specified in the
    DT_RUNPATH dynamic section attribute of the binary if present"."""
    try:
        elf = elfmini.read_file(path)
    except (OSError, ValueError):
        return []
    origin = os.path.dirname(os.path.realpath(path))
    out = []
    for d in elf.runpath or elf.rpath:
        d = d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if os.path.isdir(d):
            out.append(os.path.normpath(d))
    return out


def site_dirs():
    dirs = site.getsitepackages() + [p for p in sys.path if p.endswith("-packages")]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


SONAME_PATHS = {}


def sonames_in(dir_globs):
    names = []
    for sp in site_dirs():
        for g in dir_globs:
            for path in sorted(glob.glob(os.path.join(sp, g, "lib*.so*"))):
                if os.path.islink(path):
                    continue  # the file it points to is probed under its own SONAME
                soname, _ = elf_dynamic(path)
                if soname and soname not in names:
                    names.append(soname)
                    SONAME_PATHS[soname] = path
    return names


LOAD_PATHS = {}  # name -> the file the loader resolves it to for its dependent (dlopen'd by that path)


def needed_of(rel):
    """The names to probe for `rel` (relative to site-packages): its NEEDED entries, each loaded as
    the loader resolves it for `rel` -- from the file its RUNPATH finds (the CUDA wheels'
    libraries, via $ORIGIN/../../nvidia/...), else by name (loader cache, system directories).
    The framework's own libraries beside `rel` (PyTorch's libc10_cuda.so, libtorch_nvshmem.so)
    are not loaded one by one: they rely on symbols of their siblings that they do not NEED
    (libtorch_nvshmem.so uses c10::cuda's allocator), so `rel` itself is loaded, which loads them
    together the way the framework does."""
    for sp in site_dirs():
        path = os.path.join(sp, rel)
        if os.path.exists(path):
            own_dir = os.path.dirname(os.path.realpath(path))
            names = []
            dirs = search_dirs(path)
            for n in elf_dynamic(path)[1]:
                found = next((os.path.join(d, n) for d in dirs if os.path.exists(os.path.join(d, n))), None)
                if found and os.path.dirname(os.path.realpath(found)) == own_dir:
                    name = os.path.basename(path)
                    LOAD_PATHS.setdefault(name, path)
                    if name not in names:
                        names.append(name)
                    continue
                if found:
                    LOAD_PATHS.setdefault(n, found)
                names.append(n)
            return names, None
    return [], "%s not found in %s" % (rel, ", ".join(site_dirs()))


BENIGN = []


def probe(name):
    try:
        cp = subprocess.run([sys.executable, "-c", CHILD, name, LOAD_PATHS.get(name, "")] + BENIGN,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"name": name, "ok": False, "error": "timed out after %gs (hung after a failed load?)" % TIMEOUT}
    line = cp.stdout.decode(errors="replace").strip().splitlines()
    if cp.returncode == 0 and line:
        return json.loads(line[-1])
    err = cp.stderr.decode(errors="replace").strip().splitlines()
    return {"name": name, "ok": False,
            "error": "process died with %s: %s" % (cp.returncode, err[-1] if err else "")}


def ld_cache_paths():
    """soname -> path, from the image's loader cache (`ldconfig -p`)."""
    out = {}
    for exe in ("/sbin/ldconfig", "/usr/sbin/ldconfig"):
        if os.path.exists(exe):
            try:
                text = subprocess.run([exe, "-p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      timeout=TIMEOUT).stdout.decode(errors="replace")
            except (OSError, subprocess.TimeoutExpired):
                continue
            for line in text.splitlines():
                if "=>" in line:
                    name = line.strip().split(" ", 1)[0]
                    out.setdefault(name, line.rsplit("=>", 1)[1].strip())
            break
    return out


def missing_host_library(result, skip):
    """The host-provided library (e.g. libcuda.so.1) whose absence alone failed this load, or None."""
    err = result.get("error") or ""
    for name in skip:
        if err.startswith(name + ": cannot open shared object file") or (": " + name + ": cannot open") in err:
            return name
    return None


def resolve_deferred(results, skip, paths):
    """A library that NEEDs the host driver's libcuda.so.1 cannot load on a host without one. It
    passes when the driver library is the only thing missing: every other NEEDED entry of its ELF
    file loads by name (probed the same way). It is reported with `needs_host`."""
    cache = {r["name"]: r for r in results}
    for r in results:
        host = None if r.get("ok") else missing_host_library(r, skip)
        if not host:
            continue
        path = paths.get(r["name"])
        if not path:
            continue
        _, needed = elf_dynamic(path)
        bad = []
        for n in needed:
            if n in skip:
                continue
            if n not in cache:
                cache[n] = probe(n)
                if not cache[n].get("ok") and missing_host_library(cache[n], skip):
                    cache[n] = dict(cache[n], ok=True, needs_host=host)  # its own NEEDED are in this walk
            if not cache[n].get("ok"):
                bad.append("%s (%s)" % (n, cache[n].get("error")))
        if bad:
            r["error"] = "NEEDED entries do not load: " + "; ".join(bad)
        else:
            r.update(ok=True, error=None, needs_host=host, path=path)
    return results


def plan(argv):
    """The names to probe, in order, and those skipped: (names, skipped, errors)."""
    global TIMEOUT
    names, skip, dirs, errors = [], [], [], []
    it = iter(argv)
    for a in it:
        if a == "--timeout":
            TIMEOUT = float(next(it))
        elif a == "--nvidia-sonames":
            dirs.append("nvidia/*/lib")
        elif a == "--dirs":
            dirs.extend(x for x in next(it).split(",") if x)
        elif a == "--skip":
            skip.append(next(it))
        elif a == "--benign":
            BENIGN.append(next(it))
        elif a == "--needed-of":
            needed, err = needed_of(next(it))
            names.extend(needed)
            if err:
                errors.append({"name": a, "ok": False, "error": err})
        else:
            names.append(a)
    names.extend(sonames_in(dirs))
    ordered = [n for n in dict.fromkeys(names) if n not in skip]
    return ordered, sorted(set(names) & set(skip)), errors, skip


def main():
    names, skipped, errors, skip = plan(sys.argv[1:])
    results = [probe(n) for n in names]
    if any(not r.get("ok") and missing_host_library(r, skip) for r in results):
        paths = dict(ld_cache_paths())
        paths.update(SONAME_PATHS)
        results = resolve_deferred(results, skip, paths)
    print("IMAGEGEN-RESULT " + json.dumps({"results": errors + results, "skipped": skipped}))


if __name__ == "__main__":
    main()
