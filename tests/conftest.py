"""Shared pytest configuration: markers are assigned by directory, so a test's cost is explicit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The skip policy of scripts/test.sh (--strict-skips), in its own module so it can be tested; and the
# shared test helpers of tests/support/ (fixtures writers, checks), importable by their plain names.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
from env_guard import pytest_runtest_makereport, pytest_runtest_protocol  # noqa: E402,F401
from skip_policy import (  # noqa: E402,F401  (pytest hooks, registered by being names of this conftest)
    pytest_addoption,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)


def pytest_sessionstart(session):
    """A run stopped with SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every fixture's
    teardown still removes the images, containers and engines the tests created."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)
    # A run started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT
    # ignored, and so would every process it starts: the tests that press Ctrl-C on a child would
    # see the child ignore it. A handled signal is reset to its default in a child by exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        kind = parts[0] if len(parts) > 1 else "unit"
        if kind in ("unit", "engine", "integration") and not item.get_closest_marker(kind):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
