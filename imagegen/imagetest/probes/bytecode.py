"""Which Python sources lack bytecode Python would use as is (runs INSIDE the image, stdlib only).

Walks the standard library and every site-packages directory of the running interpreter. For each
.py file: is there a __pycache__ .pyc for this interpreter, and of which kind (PEP 552 flags:
0 timestamp, 1 unchecked hash, 3 checked hash)? Sources that do not compile at all (e.g. Python 2
templates some wheels ship) are counted apart: Python could never cache them either.
Prints one line `IMAGEGEN-RESULT <json>`.
"""
import importlib.util
import json
import os
import struct
import sys
import sysconfig
import warnings


def roots():
    paths = sysconfig.get_paths()
    out = []
    for key in ("stdlib", "purelib", "platlib"):
        p = os.path.realpath(paths[key])
        if os.path.isdir(p) and p not in out:
            out.append(p)
    return out


def main():
    warnings.simplefilter("ignore")  # compile() of a source without bytecode may warn
    kinds = {}
    missing, uncompilable = [], 0
    for root in roots():
        for d, dirs, files in os.walk(root):
            # site-packages is a root of its own (a venv's is not under the stdlib anyway)
            dirs[:] = [x for x in dirs if x not in ("__pycache__", "site-packages", "dist-packages")]
            for f in files:
                if not f.endswith(".py"):
                    continue
                src = os.path.join(d, f)
                pyc = importlib.util.cache_from_source(src)
                try:
                    with open(pyc, "rb") as fh:
                        head = fh.read(16)
                    flags = struct.unpack("<I", head[4:8])[0] if head[:4] == importlib.util.MAGIC_NUMBER else -1
                except OSError:
                    try:
                        with open(src, "rb") as fh:
                            compile(fh.read(), src, "exec", dont_inherit=True)
                    except (SyntaxError, ValueError):
                        uncompilable += 1
                        continue
                    missing.append(src)
                    continue
                kinds[flags] = kinds.get(flags, 0) + 1
    print("IMAGEGEN-RESULT " + json.dumps({
        "roots": roots(), "by_flags": {str(k): v for k, v in sorted(kinds.items())},
        "missing": len(missing), "missing_examples": missing[:5], "uncompilable": uncompilable,
    }), flush=True)


if __name__ == "__main__":
    main()
