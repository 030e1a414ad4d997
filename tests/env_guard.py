"""pytest plugin: tests leave the process environment as they found it (issue 17).

A test or fixture that changes ``os.environ`` without restoring it changes every test after it: a
module fixture once did ``os.environ.setdefault("IMAGEGEN_CACHE", <its tmp dir>)``, and a later test
then looked for its tools in a deleted cache. Environment changes go through ``monkeypatch`` (or
``pytest.MonkeyPatch.context()`` in a fixture wider than a function).

The guard snapshots ``os.environ`` when a module's first test starts and compares it after the
teardown of the module's last test, when the module's fixtures are gone. A difference fails that
teardown, naming each variable added, removed or changed. Module-scoped fixtures may set variables
while their tests run; only what outlives the module is a leak.
"""

from __future__ import annotations

import os

import pytest

_NEXT = pytest.StashKey[object]()


def _module(item):
    return getattr(item, "module", None) or item.fspath


#: set by pytest itself around each phase of a test
IGNORED = frozenset({"PYTEST_CURRENT_TEST"})


def describe(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The changes from ``before`` to ``after``, one phrase each (values are not shown: they may be secrets)."""
    before = {k: v for k, v in before.items() if k not in IGNORED}
    after = {k: v for k, v in after.items() if k not in IGNORED}
    out = [f"{k} added" for k in sorted(after.keys() - before.keys())]
    out += [f"{k} removed" for k in sorted(before.keys() - after.keys())]
    out += [f"{k} changed" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return out


_state: dict = {"module": None, "snapshot": None}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _state["module"] is not _module(item):
        _state["module"] = _module(item)
        _state["snapshot"] = dict(os.environ)
    item.stash[_NEXT] = nextitem
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "teardown":
        return
    nextitem = item.stash.get(_NEXT, None)
    if nextitem is not None and _module(nextitem) is _module(item):
        return
    before = _state["snapshot"] or {}
    changes = describe(before, dict(os.environ))
    if not changes:
        return
    # restore, so one leak is reported once and does not spread to the modules after it
    current = os.environ.get("PYTEST_CURRENT_TEST")
    os.environ.clear()
    os.environ.update({k: v for k, v in before.items() if k not in IGNORED})
    if current is not None:
        os.environ["PYTEST_CURRENT_TEST"] = current
    report = outcome.get_result()
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid}: the tests or fixtures of this module left os.environ changed "
                       f"({', '.join(changes)}); change the environment through monkeypatch")
