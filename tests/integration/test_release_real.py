"""The release flow on a real cell (the smallest: onnxruntime cpu-slim, ~173 MB), end to end:
build + test -> test record (and a re-test when the record is missing) -> scan with the real trivy
(SBOM, clean secret scan; without a DB the vuln part fails with the remedy) -> trivy's SBOM and
`imagegen audit` name the same dpkg and pip packages -> publish with aliases to Debian's
docker-registry with basic auth -> reports/publish.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "engine"))
from engine_cleanup import remove_own  # noqa: E402
from registry_fixture import LocalRegistry  # noqa: E402

from imagegen import engine, testrecord  # noqa: E402
from imagegen.registry import ACCEPT  # noqa: E402

CELL = "onnxruntime:1.23.2-cpu-slim"
PREFIX = "imagegen-test/"  # IMAGEGEN_LOCAL_PREFIX: a user's own onnxruntime:1.23.2-cpu-slim is never used or moved
LOCAL = PREFIX + CELL


def _ig(*args, env=None, check=True):
    e = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1", IMAGEGEN_LOCAL_PREFIX=PREFIX, **(env or {}))
    r = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=1800)
    if check:
        assert r.returncode == 0, f"imagegen {' '.join(args)}: {r.stderr[-2000:]}"
    return r


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def built():
    """The cell built under the tests' prefix; removed after, with the images its build made."""
    client = docker.from_env()
    before = {i.id for i in client.images.list(all=True)}
    try:
        r = _ig("build", "--variant", CELL, "--json")
        assert json.loads(r.stdout)[0]["status"] in ("built", "skipped", "tested")
        yield engine.api().inspect_image(LOCAL)["Id"]
    finally:
        remove_own(client, [LOCAL], set(), before)


def test_unchanged_image_without_a_record_is_tested_not_skipped(built):
    assert testrecord.find(built), "a passing build writes the test record of its image ID"
    path = testrecord.path_for(built)
    saved = path.read_bytes()
    path.unlink()
    try:
        (res,) = json.loads(_ig("build", "--variant", CELL, "--json").stdout)
        assert res["status"] == "tested" and "tests ran" in res["message"]
        rec = testrecord.find(built)
        assert rec and rec.passed > 0 and rec.cell == CELL
    finally:
        if not path.exists():
            path.write_bytes(saved)
    (res,) = json.loads(_ig("build", "--variant", CELL, "--json").stdout)
    assert res["status"] == "skipped"


def test_scan_sbom_secrets_and_the_missing_db(built, tmp_path):
    reports = tmp_path / "reports"
    r = _ig("scan", "--variant", CELL, "--no-vuln", "--reports", str(reports), "--json")
    (res,) = json.loads(r.stdout)
    assert res["problems"] == [] and res["os"].startswith("debian")
    assert [s for s in res["secrets"] if not s["allowed"]] == []
    sbom = json.loads((reports / "sbom-onnxruntime-1.23.2-cpu-slim.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    # no vulnerability DB here: a clear failure that says how to provide one; SBOM + secrets still ran
    r2 = _ig("scan", "--variant", CELL, "--skip-db-update", "--cache-dir", str(tmp_path / "no-db"),
             "--reports", str(tmp_path / "r2"), check=False)
    assert r2.returncode == 1
    assert "vulnerability DB is missing" in r2.stderr and "--db-repository" in r2.stderr
    assert (tmp_path / "r2" / "sbom-onnxruntime-1.23.2-cpu-slim.cdx.json").exists()
    scan = json.loads((tmp_path / "r2" / "scan-onnxruntime-1.23.2-cpu-slim.json").read_text())
    assert scan["secrets"] == [] or all(s["allowed"] for s in scan["secrets"])

    # cross-check: trivy's SBOM and imagegen audit name the same dpkg and pip packages
    audit = json.loads(_ig("audit", LOCAL, "--json", "--no-compressed").stdout)
    ours = {(p["manager"], _pep503(p["name"]) if p["manager"] == "pip" else p["name"], p["version"])
            for p in audit["packages"] if p["manager"] in ("pip", "deb")}
    theirs = set()
    for comp in sbom["components"]:
        m = re.match(r"pkg:(deb|pypi)/", comp.get("purl", ""))
        if m:
            kind = "deb" if m.group(1) == "deb" else "pip"
            name = comp["name"] if kind == "deb" else _pep503(comp["name"])
            theirs.add((kind, name, comp["version"]))
    assert {x for x in ours if x[0] == "deb"} == {x for x in theirs if x[0] == "deb"}
    assert {x for x in ours if x[0] == "pip"} == {x for x in theirs if x[0] == "pip"}
    assert len({x for x in ours if x[0] == "pip"}) >= 5 and len({x for x in ours if x[0] == "deb"}) >= 10


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry missing: run scripts/setup.sh")
def test_publish_with_aliases_to_a_registry_with_basic_auth(built, tmp_path):
    token = f"tok-{uuid.uuid4().hex}"
    with LocalRegistry(htpasswd=("ci", token)) as reg:
        report = tmp_path / "reports" / "publish.json"
        bad = _ig("publish", "--variant", CELL, "--registry", reg.host, "--namespace", "imagegen-test",
                  "--report", str(report), "--retries", "0", env={"REGISTRY_USER": "ci", "REGISTRY_TOKEN": "nope"},
                  check=False)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()[-1:]) == 1
        failed = json.loads(report.read_text())  # a failed run is recorded too
        assert failed["exit_code"] == 1 and failed["images"][0]["status"] == "failed"
        assert failed["images"][0]["digest"] is None and token not in report.read_text()
        r = _ig("publish", "--variant", CELL, "--registry", reg.host, "--namespace", "imagegen-test",
                "--report", str(report), env={"REGISTRY_USER": "ci", "REGISTRY_TOKEN": token})
        (entry,) = json.loads(report.read_text())["images"]
        assert entry["ref"] == f"{reg.host}/imagegen-test/onnxruntime:1.23.2-cpu-slim" and entry["pushed"]
        assert entry["image_id"] == built and entry["tested"]
        assert {a["tag"] for a in entry["aliases"]} == {"1.23-cpu-slim", "latest-cpu"}
        assert {a["action"] for a in entry["aliases"]} == {"moved"} and entry["status"] == "pushed"
        assert 40e6 < entry["compressed_size"] < 173e6
        for ref in [entry["ref"], *(a["ref"] for a in entry["aliases"])]:
            repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
            got = requests.get(f"http://{reg.host}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT},
                               auth=("ci", token), timeout=30)
            assert got.headers["Docker-Content-Digest"] == entry["digest"]
        for text in (r.stdout, r.stderr, bad.stdout, bad.stderr, report.read_text()):
            assert token not in text
