"""Which modules `import MODULE` loads without bytecode Python would use as is (runs INSIDE the
image, stdlib only).

usage: python bytecode.py MODULE
Imports MODULE, then, for every module loaded from a .py file: is there a __pycache__ .pyc for
this interpreter, and of which kind (PEP 552 flags: 0 timestamp, 1 unchecked hash, 3 checked
hash)? Prints one line `IMAGEGEN-RESULT <json>`.
"""
import importlib.util
import json
import os
import struct
import sys


def main():
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    __import__(sys.argv[1])
    kinds, missing = {}, []
    for m in list(sys.modules.values()):
        src = getattr(m, "__file__", None) or ""
        if not src.endswith(".py") or getattr(m, "__name__", "") == "__main__":  # this probe
            continue
        pyc = importlib.util.cache_from_source(src)
        try:
            with open(pyc, "rb") as fh:
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
