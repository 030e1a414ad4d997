"""Which modules starting the framework loads without bytecode Python would use as is (runs
INSIDE the image, stdlib only).

usage: python bytecode.py MODULE
Imports nothing but `sys` (built in), then MODULE; then, for every module loaded from a .py file
(the interpreter's start-up and the framework's import): is there a __pycache__ .pyc for this
interpreter, and of which kind (PEP 552 flags: 0 timestamp, 1 unchecked hash, 3 checked hash)?
Prints one line `IMAGEGEN-RESULT <json>`.
"""
import sys


def main():
    here = __file__
    if sys.path and sys.path[0] and here.startswith(sys.path[0] + "/"):
        sys.path.pop(0)
    __import__(sys.argv[1])
    loaded = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    import importlib.util  # only now: the probe's own imports are not the framework's
    import json
    import struct

    kinds, missing = {}, []
    for src in loaded:
        if not src.endswith(".py") or src == here:
            continue
        try:
            with open(importlib.util.cache_from_source(src), "rb") as fh:
                head = fh.read(16)
        except OSError:
            missing.append(src)
            continue
        flags = struct.unpack("<I", head[4:8])[0] if head[:4] == importlib.util.MAGIC_NUMBER else -1
        kinds[flags] = kinds.get(flags, 0) + 1
    print("IMAGEGEN-RESULT " + json.dumps({
        "modules": sum(kinds.values()) + len(missing), "by_flags": {str(k): v for k, v in sorted(kinds.items())},
        "missing": len(missing), "missing_examples": sorted(missing)[:5],
    }), flush=True)


if __name__ == "__main__":
    main()
