"""Time a smoke script's cold start (runs INSIDE the image, any Python 3.8+).

usage: python timed.py MODULE SCRIPT [ARGS...]
Imports MODULE (the framework) and times it, then runs SCRIPT as __main__ with ARGS and times
that: the first inference, model preparation included. Prints the script's own output, then
`IMAGEGEN-TIMING {"import_s": ..., "first_inference_s": ...}` (seconds, this process only:
interpreter start-up and the container's excluded). Figures, not gates.
"""
import json
import os
import runpy
import sys
import time

MARKER = "IMAGEGEN-TIMING "


def main():
    module, script = sys.argv[1], sys.argv[2]
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # the probes directory is nobody's import root
    t0 = time.perf_counter()
    __import__(module)
    t1 = time.perf_counter()
    sys.argv = [script] + sys.argv[3:]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    t2 = time.perf_counter()
    sys.stdout.flush()
    print(MARKER + json.dumps({"import_s": round(t1 - t0, 3), "first_inference_s": round(t2 - t1, 3)}), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
