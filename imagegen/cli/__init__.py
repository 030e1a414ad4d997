"""The imagegen command line: the top layer, and the only place that imports Typer or turns errors
into exit codes (``main``). Every command is a thin function in one of these modules, registered on
the one ``app`` with a decorator; the work is done by the pipeline and the stages below.

    app.py          the Typer app, shared options, cell selection, main() (errors -> exit codes)
    matrix_cmds.py  validate, list, schema, render
    lock_cmds.py    lock, fetch, cache prune
    build_cmds.py   build, test
    release_cmds.py scan, publish, ci matrix
    base_cmds.py    base build, base list, doctor
    audit_cmd.py    audit (incl. --trace VARIANT and --trace-image)
    verify_cmd.py   verify (a cold rebuild compared with an image)
    pick_cmd.py     pick (the image for this host's GPUs)
"""

# Importing a command module registers its commands; this order is the order of `imagegen --help`.
from . import matrix_cmds  # noqa: F401,I001
from . import lock_cmds  # noqa: F401
from . import build_cmds  # noqa: F401
from . import release_cmds  # noqa: F401
from . import base_cmds  # noqa: F401
from . import audit_cmd  # noqa: F401
from . import verify_cmd  # noqa: F401
from . import pick_cmd  # noqa: F401
from .app import app, main

__all__ = ["app", "main"]
