"""pytest plugin loaded with `-p imagegen.imagetest.plugin` in the suite's pytest process:
writes one JSON line per check result to $IMAGEGEN_TEST_RESULTS for the rich summary, with the
check's recorded figures (`request.node.user_properties` beyond image/check, e.g. the smoke
test's cpu_import_s and cpu_first_inference_s)."""

from __future__ import annotations

import json

from .. import settings

_results: dict[str, dict] = {}


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = getattr(report, "longreprtext", "") or str(report.longrepr or "")
    lines = [x for x in text.strip().splitlines() if x.strip()]
    if not lines:
        return ""
    # pytest.fail(pytrace=False) gives just our one line; an unexpected error gives a traceback:
    # keep its last line (the exception), which names what broke
    return lines[-1].removeprefix("E   ").strip() if len(lines) > 1 else lines[0]


def pytest_runtest_logreport(report) -> None:
    props = dict(report.user_properties)
    r = _results.setdefault(report.nodeid, {
        "nodeid": report.nodeid, "image": props.get("image", ""), "check": props.get("check", report.nodeid),
        "outcome": "passed", "seconds": 0.0, "message": "", "properties": {},
    })
    r["properties"].update({k: v for k, v in props.items() if k not in ("image", "check")})
    r["seconds"] += report.duration
    if report.failed:
        r["outcome"] = "error" if report.when != "call" else "failed"
        r["message"] = _message(report)
    elif report.skipped and r["outcome"] == "passed":
        r["outcome"] = "skipped"
        r["message"] = _message(report)


def pytest_collectreport(report) -> None:
    """A check module that skipped or failed while it was collected (`pytest.skip(allow_module_level=True)`,
    `importorskip`, an import error) ran for no image: recorded for every image (`image` ""), so the
    skip rule and the test records see it."""
    if report.skipped or report.failed:
        _results[report.nodeid] = {
            "nodeid": report.nodeid, "image": "", "check": report.nodeid, "seconds": 0.0, "properties": {},
            "outcome": "skipped" if report.skipped else "error", "message": _message(report)}


def pytest_sessionfinish(session, exitstatus) -> None:
    path = settings.TEST_RESULTS.value()
    if path:
        with open(path, "w") as fh:
            for r in _results.values():
                fh.write(json.dumps(r) + "\n")
