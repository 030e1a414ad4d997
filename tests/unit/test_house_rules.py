"""The house rules of docs/ARCHITECTURE.md, kept by tests (architecture review 3, §6 item 1).

Each rule has an allowlist of today's exceptions that may only shrink: a new exception fails the
test, and so does an allowlisted one that is gone (remove it from the list)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_ruff_is_clean():
    """pyflakes, import order and bugbear ([tool.ruff] in pyproject.toml) on the package, tests and bench."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is not installed: pip install -e '.[test]'"
    r = subprocess.run([ruff, "check", "--no-cache", "imagegen", "tests", "bench"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
