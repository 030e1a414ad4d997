"""The skip allowlist of scripts/test.sh (issue 9 item 2): with --strict-skips, a skip outside
tests/allowed-skips.txt fails the run and names the test; allowed skips and a plain run pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = '''
import pytest

def test_ok():
    pass

def test_no_gpu():
    pytest.skip("no NVIDIA GPU on this host (nvidia-smi not found)")

@pytest.mark.skipif(True, reason="needs an NVIDIA GPU and driver (no /dev/nvidiactl)")
def test_opt_in():
    pass

def test_missing_tool():
    pytest.skip("chromium not installed (apt-get install chromium)")
'''


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin",
                               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_unallowed_skip_fails_the_run_and_is_named(tmp_path):
    res = _pytest(tmp_path, "--strict-skips")
    assert res.returncode == 1, res.stdout + res.stderr
    named = [ln for ln in res.stdout.splitlines() if ln.startswith("SKIP NOT ALLOWED")]
    assert named == ["SKIP NOT ALLOWED test_sample.py::test_missing_tool: chromium not installed "
                     "(apt-get install chromium)"], res.stdout


def test_allowed_skips_pass(tmp_path):
    res = _pytest(tmp_path, "--strict-skips", "-k", "not missing_tool")
    assert res.returncode == 0 and "2 skipped" in res.stdout, res.stdout + res.stderr


def test_without_the_option_skips_stay_skips(tmp_path):
    res = _pytest(tmp_path)
    assert res.returncode == 0 and "3 skipped" in res.stdout, res.stdout + res.stderr


def test_the_test_command_uses_it():
    text = (ROOT / "scripts" / "test.sh").read_text()
    assert "--strict-skips" in text
    allowed = [ln for ln in (ROOT / "tests" / "allowed-skips.txt").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert allowed == ["NVIDIA GPU"]  # short on purpose; widen only with a reason
