"""run_targets: run the check suite against images and summarise.

The suite runs in its own pytest process (`python -m pytest <package>/checks ...`): a native
crash or hang in a check cannot take the caller down, the caller's own pytest (if any) is not
re-entered, and the same command works from an installed package. Its progress goes to stderr;
the summary goes to stdout (imagegen.console.out); JUnit XML goes to junit_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from rich.text import Text

from .. import settings
from ..errors import GateFailed, UserInputError
from .target import TestTarget, dump_targets

CHECKS_DIR = Path(__file__).parent / "checks"
CHECK_MODULES = sorted(p.stem.removeprefix("test_") for p in CHECKS_DIR.glob("test_*.py"))


@dataclass
class CheckResult:
    image: str
    check: str
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str = ""
    properties: dict = field(default_factory=dict)  # figures a check recorded (JUnit <property>), not gates


@dataclass
class Summary:
    results: list[CheckResult] = field(default_factory=list)
    junit_path: Path | None = None
    exit_code: int = 0
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed") + self.count("error")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.exit_code in (0, 5) and bool(self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome in ("failed", "error")]

    def reasons(self) -> list[str]:
        return [f"{r.check}: {r.message}" for r in self.failures]

    def raise_for_failures(self) -> None:
        if not self.ok:
            n_img = len({r.image for r in self.failures})
            where = f"; JUnit XML: {self.junit_path}" if self.junit_path else ""
            if not self.results:
                raise GateFailed(f"the image test suite ran no checks (pytest exit {self.exit_code}){where}")
            raise GateFailed(f"{self.failed} image check(s) failed on {n_img} image(s){where}")


def run_targets(
    targets: list[TestTarget],
    junit_path: Path | str,
    *,
    checks: list[str] | None = None,
    keyword: str | None = None,
    verbose: bool = False,
    print_summary: bool = True,
    pytest_args: list[str] | None = None,
) -> Summary:
    """Run the checks (all, or the modules named in `checks`, e.g. ["policy", "tag"]) against
    the targets; write JUnit XML; print the summary on stdout; return the Summary."""
    if not targets:
        raise UserInputError("no images to test")
    unknown = sorted(set(checks or []) - set(CHECK_MODULES))
    if unknown:
        raise UserInputError(f"unknown check module(s) {', '.join(unknown)}; known: {', '.join(CHECK_MODULES)}")
    junit_path = Path(junit_path).resolve()
    junit_path.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(CHECKS_DIR / f"test_{c}.py") for c in checks] if checks else [str(CHECKS_DIR)]
    with tempfile.TemporaryDirectory(prefix="imagegen-run-") as tmp:
        tfile, rfile = Path(tmp) / "targets.json", Path(tmp) / "results.jsonl"
        dump_targets(targets, tfile)
        cmd = [
            sys.executable, "-m", "pytest", *paths,
            "-c", str(CHECKS_DIR / "pytest.ini"), "--rootdir", str(CHECKS_DIR),
            "-p", "imagegen.imagetest.plugin", "-p", "no:cacheprovider",
            f"--junitxml={junit_path}", "-o", "junit_suite_name=imagegen-image-tests", "-o", "junit_family=xunit2",
            "--tb=short", "-v" if verbose else "-q", "-rfEs",
        ]
        if keyword:
            cmd += ["-k", keyword]
        cmd += list(pytest_args or [])
        # The child imports exactly the `imagegen` that runs here (not one from its working directory
        # or another installed checkout): its package root first on PYTHONPATH, cwd never.
        pkg_root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, settings.TEST_TARGETS.name: str(tfile), settings.TEST_RESULTS.name: str(rfile),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONSAFEPATH": "1", "PYTHONPATH": pythonpath}
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, stdin=subprocess.DEVNULL)
        results = [CheckResult(**{k: v for k, v in json.loads(line).items() if k != "nodeid"})
                   for line in rfile.read_text().splitlines()] if rfile.exists() else []
    summary = Summary(police_skips(results), junit_path, proc.returncode, time.monotonic() - t0)
    if print_summary:
        print_summary_table(summary)
    return summary


def police_skips(results: list[CheckResult]) -> list[CheckResult]:
    """Each skipped check whose reason matches no entry of imagegen/data/image-skips.yaml becomes an
    error (the check did not run because of this host): the run then fails and no test record is
    written, so `publish` never trusts a record that hides a check that did not run."""
    from .. import compat

    allowed = compat.image_skips()
    for r in results:
        if r.outcome == "skipped" and not any(p.search(r.message) for p, _ in allowed):
            r.outcome = "error"
            r.message = (f"skipped for a reason no test record may hide: {r.message} (allowed reasons: "
                         f"imagegen/data/image-skips.yaml)")
    return results


def print_summary_table(summary: Summary, console=None) -> None:
    """The summary on stdout (it is the result of `imagegen test`), or on `console` (stderr when the
    tests are a step of `imagegen build`, whose result is the build table or its --json)."""
    from ..console import out as stdout_console

    out = console or stdout_console

    by_image: dict[str, list[CheckResult]] = defaultdict(list)
    for r in summary.results:
        by_image[r.image].append(r)
    table = Table(title="image tests", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("image", "passed", "failed", "skipped", "time"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for image, rs in by_image.items():
        f = sum(1 for r in rs if r.outcome in ("failed", "error"))
        table.add_row(image, str(sum(1 for r in rs if r.outcome == "passed")),
                      Text(str(f), style="bold red" if f else ""),
                      str(sum(1 for r in rs if r.outcome == "skipped")), f"{sum(r.seconds for r in rs):.1f}s")
    out.print(table)
    for line in timing_lines(summary):
        out.print(Text(line))
    for r in summary.failures:
        out.print(Text.assemble(("FAIL ", "bold red"), (f"{r.check} ", "bold"), r.message))
    skips: dict[str, list[str]] = defaultdict(list)
    for r in summary.results:
        if r.outcome == "skipped":
            skips[r.message].append(r.check)
    for reason, names in skips.items():
        uniq = sorted(set(names))
        out.print(Text.assemble(("skip ", "yellow"), f"{', '.join(uniq)}: {reason}"))
    verdict = "passed" if summary.ok else "FAILED"
    out.print(Text.assemble((f"{verdict}: ", "bold green" if summary.ok else "bold red"),
                            f"{summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped "
                            f"in {summary.seconds:.1f}s; JUnit XML: {summary.junit_path}"))


def timing_lines(summary: Summary) -> list[str]:
    """One line per image whose smoke test recorded its cold-start figures (seconds inside the
    container: `import <framework>`, then the first inference; figures, not gates)."""
    lines = []
    for r in summary.results:
        p = r.properties
        for mode in ("cpu", "gpu"):
            if f"{mode}_import_s" in p:
                lines.append(f"timing {r.image}: {mode.upper()} smoke: import {float(p[f'{mode}_import_s']):.2f} s, "
                             f"first inference {float(p.get(f'{mode}_first_inference_s', 0)):.2f} s")
    return lines
