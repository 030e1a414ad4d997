"""Small helpers shared by the check modules (imported by them; no fixtures here)."""

from __future__ import annotations

import json

import pytest

from .. import settings
from ..scripts import contract
from .container import TestContainer
from .target import TestTarget

PROBE_TIMEOUT = settings.PROBE_TIMEOUT.value()
MARKER = contract.RESULT_MARK


class ProbeError(Exception):
    pass


def fail(target: TestTarget, message: str) -> None:
    """Fail a check with one line: the image, then what was found."""
    pytest.fail(f"{target.id}: {message}", pytrace=False)


def parse(result, what: str) -> dict:
    """The JSON a probe printed on its IMAGEGEN-RESULT line, or a ProbeError naming the cause."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    why = "timed out" if result.timed_out else f"exit {result.rc}"
    raise ProbeError(f"{what} failed ({why}): {result.tail()}")


def container(target: TestTarget, workdir, **kw) -> TestContainer:
    return TestContainer(target.image, target.python_exe, workdir, **kw)


def same_version(found: str, claimed: str) -> bool:
    """Versions agree on every component both give ("8.6" matches "8.6.0")."""
    a, b = str(found).split("."), str(claimed).split(".")
    n = min(len(a), len(b))
    return bool(found) and bool(claimed) and a[:n] == b[:n]
