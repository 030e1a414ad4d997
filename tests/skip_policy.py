"""pytest plugin: the skip allowlist of scripts/test.sh.

With `--strict-skips`, a skip whose reason matches no line of tests/allowed-skips.txt fails the
run (exit 1), and the terminal summary names each such test with its reason. A green run can then
no longer hide a check that did not run (issue 9 item 2).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ALLOWED_SKIPS = Path(__file__).resolve().parent / "allowed-skips.txt"


def pytest_addoption(parser):
    parser.addoption("--strict-skips", action="store_true", default=False,
                     help="fail the run on any skip whose reason is not in tests/allowed-skips.txt "
                          "(scripts/test.sh passes it)")


def allowed_skip_patterns() -> list[re.Pattern]:
    lines = ALLOWED_SKIPS.read_text().splitlines()
    return [re.compile(ln.strip()) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def skip_reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        reason = str(lr[2])
    else:
        reason = str(lr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


_unallowed: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    config = _CONFIG.get("config")
    if config is None or not config.getoption("--strict-skips"):
        return
    reason = skip_reason(report)
    if not any(p.search(reason) for p in allowed_skip_patterns()):
        _unallowed.append((report.nodeid, reason))


_CONFIG: dict = {}


def pytest_configure(config):
    _CONFIG["config"] = config


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _unallowed:
        terminalreporter.section("skips outside tests/allowed-skips.txt (each fails the run)", red=True)
        for nodeid, reason in _unallowed:
            terminalreporter.write_line(f"SKIP NOT ALLOWED {nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _unallowed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
