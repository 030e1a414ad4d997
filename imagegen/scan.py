"""`imagegen scan`: vulnerability scan of built cells with trivy, run through plumbum.

The image is handed to trivy as a `docker save` archive (`trivy image --input`), so trivy needs
no access to the Docker socket and the scan works the same for shell-less images. The runtime
bases keep a dpkg status file listing exactly the packages present, so trivy sees the OS
packages; pip packages are found from their dist-info.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from plumbum import local
from plumbum.commands.processes import CommandNotFound, ProcessExecutionError, ProcessTimedOut

from . import engine
from .errors import GateFailed, ImagegenError, UserInputError

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")


@dataclass
class Finding:
    id: str
    severity: str
    package: str
    installed: str
    fixed: str
    target: str


@dataclass
class ScanResult:
    image: str
    findings: list[Finding] = field(default_factory=list)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def at_or_above(self, severity: str) -> list[Finding]:
        floor = SEVERITIES.index(severity)
        return [f for f in self.findings if SEVERITIES.index(f.severity) >= floor]


def parse_report(data: dict, image: str) -> ScanResult:
    """trivy's JSON report (SchemaVersion 2) -> findings."""
    result = ScanResult(image)
    for res in data.get("Results") or []:
        for v in res.get("Vulnerabilities") or []:
            sev = str(v.get("Severity", "UNKNOWN")).upper()
            result.findings.append(Finding(
                id=v.get("VulnerabilityID", "?"), severity=sev if sev in SEVERITIES else "UNKNOWN",
                package=v.get("PkgName", "?"), installed=v.get("InstalledVersion", ""),
                fixed=v.get("FixedVersion", ""), target=res.get("Target", "")))
    result.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.package, f.id))
    return result


def trivy():
    exe = os.environ.get("IMAGEGEN_TRIVY", "trivy")
    try:
        return local[exe]
    except CommandNotFound:
        raise ImagegenError(f"trivy not found ({exe}); install it from aquasecurity's release packages (not in "
                            "Debian bookworm) or set IMAGEGEN_TRIVY; `imagegen doctor` checks it") from None


def scan_image(ref: str, *, ignore_unfixed: bool = False, offline: bool = False, timeout: int = 1800) -> ScanResult:
    cmd = trivy()
    api = engine.api()
    try:
        api.inspect_image(ref)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound and friends
        raise UserInputError(f"image {ref} is not in the local engine") from None
    with tempfile.TemporaryDirectory(prefix="imagegen-scan-") as tmp:
        archive = Path(tmp) / "image.tar"
        with open(archive, "wb") as fh:
            for chunk in api.get_image(ref, chunk_size=4 << 20):
                fh.write(chunk)
        report = Path(tmp) / "report.json"
        args = ["image", "--quiet", "--format", "json", "--output", str(report), "--input", str(archive),
                "--scanners", "vuln"]
        if ignore_unfixed:
            args.append("--ignore-unfixed")
        if offline:
            args += ["--skip-db-update", "--offline-scan"]
        try:
            cmd[args].run(timeout=timeout)
        except ProcessTimedOut:
            raise ImagegenError(f"trivy did not finish scanning {ref} within {timeout}s") from None
        except ProcessExecutionError as exc:
            last = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise ImagegenError(f"trivy failed on {ref}: {last[-1] if last else f'exit {exc.retcode}'}") from None
        return parse_report(json.loads(report.read_text()), ref)


def gate(results: list[ScanResult], fail_on: str | None) -> None:
    if not fail_on:
        return
    if fail_on not in SEVERITIES:
        raise UserInputError(f"--fail-on takes one of {', '.join(SEVERITIES)}")
    bad = [(r, r.at_or_above(fail_on)) for r in results]
    bad = [(r, f) for r, f in bad if f]
    if bad:
        raise GateFailed("; ".join(f"{r.image}: {len(f)} finding(s) at {fail_on} or above (e.g. {f[0].id} in "
                                   f"{f[0].package} {f[0].installed})" for r, f in bad))
