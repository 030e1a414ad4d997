"""The environment guard of the test suite (issue 17): a module whose tests or fixtures leave
os.environ changed fails, naming the variable; monkeypatch'ed changes and clean modules pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LEAKY = '''
import os
import pytest

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    os.environ.setdefault("LEAKED_BY_FIXTURE", str(tmp_path_factory.mktemp("c")))
    return os.environ["LEAKED_BY_FIXTURE"]

def test_one(cache):
    assert cache

def test_two(cache):
    assert cache
'''

CLEAN = '''
import os
import pytest

@pytest.fixture(scope="module")
def scoped():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCOPED_TO_MODULE", "1")
        yield

def test_scoped(scoped):
    assert os.environ["SCOPED_TO_MODULE"] == "1"

def test_monkeypatched(monkeypatch):
    monkeypatch.setenv("ONLY_THIS_TEST", "1")
    monkeypatch.delenv("HOME", raising=False)

def test_after():
    assert "ONLY_THIS_TEST" not in os.environ and "HOME" in os.environ
'''


def _pytest(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "env_guard", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_a_leaking_module_fixture_fails_and_is_named(tmp_path):
    res = _pytest(tmp_path, {"test_a_leaky.py": LEAKY, "test_b_clean.py": CLEAN})
    assert res.returncode == 1, res.stdout
    assert "LEAKED_BY_FIXTURE added" in res.stdout
    assert "test_a_leaky.py::test_two" in res.stdout  # reported on the module's last test, once
    assert res.stdout.count("left os.environ changed") == 1
    assert "5 passed, 1 error" in res.stdout  # the clean module after it is unaffected


def test_monkeypatched_changes_pass(tmp_path):
    res = _pytest(tmp_path, {"test_clean.py": CLEAN})
    assert res.returncode == 0, res.stdout
    assert "3 passed" in res.stdout
