"""`python -m imagegen.bases --hook KIND CFG ROOT`: the mmdebstrap hook (imagegen/bases/hook.py)."""

import sys

from .hook import main

if len(sys.argv) == 5 and sys.argv[1] == "--hook":
    sys.exit(main(sys.argv[2:]))
print("usage: python -m imagegen.bases --hook runtime|minbase CFG_JSON ROOT", file=sys.stderr)
sys.exit(2)
