"""scan: trivy report parsing, the severity gate, and a missing trivy as a one-line error."""

from __future__ import annotations

import pytest

from imagegen import trivy as scan
from imagegen.errors import GateFailed, ImagegenError

REPORT = {
    "SchemaVersion": 2,
    "Results": [
        {"Target": "paddle:3.3.1-cpu-slim (debian 12.12)", "Class": "os-pkgs", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2025-0001", "PkgName": "libc6", "InstalledVersion": "2.36-9+deb12u13",
             "FixedVersion": "2.36-9+deb12u14", "Severity": "HIGH"},
            {"VulnerabilityID": "CVE-2025-0002", "PkgName": "tzdata", "InstalledVersion": "2025b",
             "Severity": "LOW"},
        ]},
        {"Target": "Python", "Class": "lang-pkgs", "Vulnerabilities": [
            {"VulnerabilityID": "GHSA-xxxx", "PkgName": "pillow", "InstalledVersion": "13.0.0",
             "Severity": "critical"},
        ]},
        {"Target": "Python", "Class": "lang-pkgs"},
    ],
}


def test_parse_orders_by_severity():
    r = scan.parse_report(REPORT, "img")
    assert [f.id for f in r.findings] == ["GHSA-xxxx", "CVE-2025-0001", "CVE-2025-0002"]
    assert r.count("CRITICAL") == 1 and r.count("HIGH") == 1 and r.count("LOW") == 1
    assert r.findings[1].fixed == "2.36-9+deb12u14"


def test_gate():
    r = scan.parse_report(REPORT, "img")
    scan.gate([r], None)
    with pytest.raises(GateFailed, match="img: 2 finding"):
        scan.gate([r], "HIGH")
    clean = scan.parse_report({"Results": []}, "clean")
    scan.gate([clean], "LOW")


def test_missing_trivy_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("IMAGEGEN_TRIVY", "trivy-does-not-exist-here")
    with pytest.raises(ImagegenError, match="trivy not found"):
        scan.locate()
