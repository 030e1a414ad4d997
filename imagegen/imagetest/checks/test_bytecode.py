"""Shipped bytecode (cold start). A slim image runs with a read-only root, as a user who cannot
write its environment, with PYTHONDONTWRITEBYTECODE=1: Python can cache nothing, so any module
without usable bytecode is compiled again on every container start. The build compiles the
modules `import <framework>` loads (environment and standard library) with unchecked-hash .pyc
files (PEP 552), which Python loads without looking at the source, so nothing can make it
rewrite them."""

import pytest

from imagegen.imagetest.container import MOUNT
from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, container, fail, parse
from imagegen.imagetest.target import POLICY_RULES

UNCHECKED = "1"  # PEP 552 flags: hash-based, source not checked


def _enforced(target):
    if not target.rule("bytecode_compiled"):
        why = target.policy_notes.get("bytecode_compiled") or f"not enforced for the {target.flavor} flavor " \
              "or with slimming `bytecode: drop`"
        pytest.skip(f"rule bytecode_compiled ({POLICY_RULES['bytecode_compiled']}): {why}")


# Share of the modules `import <framework>` loads that may lack bytecode: a few are loaded through
# paths the build-time trace does not see (measured: torch 2.13's _classes.py and _ops.py, 2 of 926).
# Compiling those costs milliseconds per start; a trace that missed a package would miss hundreds.
MISSING_TOLERANCE = 0.01


def test_import_compiled(target, ctr):
    """The image's own Python, in the hardened (read-only) container: the modules `import
    <framework>` loads from .py files have unchecked-hash .pyc files for this interpreter (at most
    MISSING_TOLERANCE of them may lack one; they are named either way)."""
    _enforced(target)
    try:
        res = parse(ctr.python("probes/bytecode.py", target.framework.import_name, timeout=PROBE_TIMEOUT),
                    "bytecode probe")
    except ProbeError as exc:
        fail(target, str(exc))
    missing, total = res["missing"], max(1, res["modules"])
    if missing:
        print(f"compiled at every start ({missing} of {total}): " + ", ".join(res["missing_examples"]))
    if missing > MISSING_TOLERANCE * total:
        fail(target, f"{missing} of {res['modules']} modules `import {target.framework.import_name}` loads "
                     "have no bytecode and are compiled on every start: " + ", ".join(res["missing_examples"]))
    other = {k: v for k, v in res["by_flags"].items() if k != UNCHECKED}
    if other:
        fail(target, f".pyc files that Python checks against their source (PEP 552 flags: count): {other}")


def test_start_rewrites_no_bytecode(target, workdir, smoke):
    """Even where Python could write (root, writable root filesystem, PYTHONDONTWRITEBYTECODE
    unset), `import <framework>` and the smoke inference leave every .pyc as shipped (docker diff)."""
    _enforced(target)
    c = container(target, workdir, user="0:0", read_only=False, env={"PYTHONDONTWRITEBYTECODE": ""}).start()
    try:
        script, args = smoke
        # the smoke script straight from the image's Python, without probes/run.py: the test
        # harness's own modules (subprocess, signal, ...) are not the framework's start-up
        r = c.exec([target.python_exe, f"{MOUNT}/{script}", "cpu", *args], timeout=PROBE_TIMEOUT)
        try:
            parse(r, "CPU smoke inference as root on a writable root")
        except ProbeError as exc:
            fail(target, str(exc))
        from imagegen.engine import api

        changed = sorted(d["Path"] for d in (api().diff(c.id) or [])
                         if d["Path"].endswith(".pyc") or d["Path"].endswith("/__pycache__"))
    finally:
        c.remove()
    if changed:
        fail(target, f"{len(changed)} bytecode path(s) written at run time: {', '.join(changed[:5])}")
