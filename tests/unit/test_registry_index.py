"""Indexes and manifest lists in the registry (issue "release faults", kind 4): a tag that holds an OCI
index (or a Docker manifest list) whose child for linux/amd64 is an image is read as that image; the
attestation entries BuildKit adds (`unknown/unknown`) are never taken for it. Against Debian's
`docker-registry` on loopback, with images written through the registry's HTTP API."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from registry_fixture import LocalRegistry, upload_blob  # noqa: E402

from imagegen.registry import DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, Registry  # noqa: E402

REPO = "imagegen/index"


def _blob(host: str, data: bytes) -> dict:
    return upload_blob(host, REPO, data)


def _put(host: str, ref: str, doc: dict) -> dict:
    raw = json.dumps(doc).encode()
    r = requests.put(f"http://{host}/v2/{REPO}/manifests/{ref}", data=raw, timeout=10,
                     headers={"Content-Type": doc["mediaType"]})
    assert r.status_code == 201, r.text
    return {"mediaType": doc["mediaType"], "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}


def _image(host: str, arch: str, marker: str) -> tuple[dict, str]:
    """An image manifest (pushed by digest) and its config digest."""
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {"m": marker}},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cfg = _blob(host, config)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": dict(cfg, mediaType="application/vnd.oci.image.config.v1+json"),
           "layers": [dict(_blob(host, f"layer {marker}".encode()), mediaType="application/vnd.oci.image.layer.v1.tar")]}
    desc = _put(host, "sha256:" + hashlib.sha256(json.dumps(doc).encode()).hexdigest(), doc)
    return desc, cfg["digest"]


@pytest.fixture(scope="module")
def reg():
    with LocalRegistry() as r:
        yield r


def test_index_resolves_to_its_platform_child_past_attestations(reg):
    amd64, amd64_config = _image(reg.host, "amd64", "amd64")
    arm64, _ = _image(reg.host, "arm64", "arm64")
    attestation, _ = _image(reg.host, "amd64", "attestation")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        # BuildKit lists the attestation of the amd64 image too; it must never be taken for the image
        dict(attestation, platform={"os": "unknown", "architecture": "unknown"},
             annotations={"vnd.docker.reference.type": "attestation-manifest",
                          "vnd.docker.reference.digest": amd64["digest"]}),
        dict(arm64, platform={"os": "linux", "architecture": "arm64"}),
        dict(amd64, platform={"os": "linux", "architecture": "amd64"}),
    ]}
    _put(reg.host, "multi", index)
    r = Registry(reg.host)
    top = r.get_manifest(REPO, "multi")
    assert top.is_index and top.media_type == OCI_INDEX and top.config_digest is None
    image = r.image_for(REPO, top)
    assert image.digest == amd64["digest"] and image.config_digest == amd64_config
    assert r.image_for(REPO, top, ("linux", "riscv64", None)) is None
    single = r.get_manifest(REPO, amd64["digest"])
    assert not single.is_index and r.image_for(REPO, single) == single


def test_docker_manifest_list_and_nested_index(reg):
    amd64, amd64_config = _image(reg.host, "amd64", "nested")
    inner = _put(reg.host, "inner", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        dict(amd64, platform={"os": "linux", "architecture": "amd64"})]})
    outer = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        dict(inner, platform={"os": "linux", "architecture": "amd64"})]}
    _put(reg.host, "outer", outer)
    r = Registry(reg.host)
    assert r.image_for(REPO, r.get_manifest(REPO, "outer")).config_digest == amd64_config
    # a Docker manifest list of Docker manifests reads the same way
    listed = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        dict(amd64, platform={"os": "linux", "architecture": "amd64"})]}
    _put(reg.host, "list", listed)
    top = r.get_manifest(REPO, "list")
    assert top.is_index and r.image_for(REPO, top).config_digest == amd64_config
