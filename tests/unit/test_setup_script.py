"""scripts/setup.sh under `set -euo pipefail` (issue 9 item 2): `apt-cache policy X | grep -q ...`
failed whenever grep matched early (the writer got SIGPIPE, 141), so chromium never installed and the
browser test skipped on every fresh machine. The helpers are run here, extracted from the script,
against stub commands whose output is long enough to make that race certain."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]


def _function(name: str) -> str:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(rf"^{name}\(\) \{{.*?^\}}$|^{name}\(\) \{{.*?\}}$", text, re.S | re.M)
    assert m, f"{name} not found in setup.sh"
    return m.group(0)


POLICY = "chromium:\n  Installed: (none)\n  Candidate: {cand}\n  Version table:\n" + "     1.0 500\n" * 20000


@pytest.fixture
def stubs(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()

    def make(name: str, body: str):
        p = bin_ / name
        p.write_text("#!/bin/bash\n" + body)
        p.chmod(0o755)

    make("apt-cache", 'case "$2" in\n'
         f'  chromium) cat <<"EOF"\n{POLICY.format(cand="120.0-1~deb12u1")}EOF\n;;\n'
         f'  snap-only) cat <<"EOF"\n{POLICY.format(cand="(none)")}EOF\n;;\n'
         "  *) exit 0;;\nesac\n")
    make("dpkg-query", 'if [ "$3" = busybox-static ]; then printf "install ok installed"; '
         'yes "padding" | head -n 50000; else exit 1; fi\n')
    return bin_


def _call(stubs: Path, fn: str, arg: str) -> int:
    script = f"set -euo pipefail\n{_function(fn)}\nif {fn} {arg}; then exit 0; else exit 1; fi\n"
    return subprocess.run(["bash", "-c", script], env={"PATH": f"{stubs}:/usr/bin:/bin"}).returncode


def test_has_candidate_under_pipefail(stubs):
    assert _call(stubs, "has_candidate", "chromium") == 0
    assert _call(stubs, "has_candidate", "snap-only") == 1  # "Candidate: (none)"
    assert _call(stubs, "has_candidate", "nosuch") == 1


def test_installed_under_pipefail(stubs):
    assert _call(stubs, "installed", "busybox-static") == 0
    assert _call(stubs, "installed", "nosuch") == 1


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_early_exit_reader_in_a_pipefail_pipeline(script):
    """The kind: a pipeline whose reader may stop early (grep -q, grep -m, head) fails under
    pipefail when the writer is still writing. Such readers must read a captured value instead."""
    text = script.read_text()
    if "pipefail" not in text:
        return
    for n, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        if re.search(r"\|\s*(grep\s+(-\w*[qm]\w*)|head\b|sed\s+-n\s+\S*q)", code):
            pytest.fail(f"{script.name}:{n}: early-exit reader in a pipefail pipeline: {line.strip()}")


def test_setup_installs_what_the_tests_need():
    """Tools whose absence would fail a test (never skip it) are installed by setup.sh."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    for pkg in ("busybox-static", "strace", "docker-registry", "mmdebstrap", "binutils", "gcc", "chromium"):
        assert re.search(rf"\b{re.escape(pkg)}\b", text), pkg
