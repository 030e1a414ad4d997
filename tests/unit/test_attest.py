"""Attestations attached to an image digest (imagegen.attest), against Debian's `docker-registry` on
loopback: the tag fallback where the registry has no referrers API (distribution 2.8, what it is), and
the referrers path through tests/engine/fault_proxy.py playing that API in front of it. The registry's
state (tags, index, subjects), the proxy's request log and what `find`/`fetch` return are asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from fault_proxy import FaultProxy  # noqa: E402
from registry_fixture import LocalRegistry, push_image  # noqa: E402

from imagegen import attest  # noqa: E402
from imagegen.errors import ImagegenError  # noqa: E402
from imagegen.registry import OCI_INDEX, OCI_MANIFEST, Manifest, Registry  # noqa: E402

pytestmark = pytest.mark.unit

REPO = "imagegen/attest"
SBOM = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "components": []}).encode()
PROVENANCE = json.dumps({"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1"
                         }).encode()


def _image(host: str, marker: str) -> Manifest:
    raw, digest = push_image(host, REPO, marker)
    return Manifest(digest, OCI_MANIFEST, raw)


def _tag(host: str, tag: str) -> requests.Response:
    return requests.get(f"http://{host}/v2/{REPO}/manifests/{tag}", timeout=10,
                        headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})


@pytest.fixture(scope="module")
def reg():
    with LocalRegistry() as r:
        yield r


def test_tag_fallback_where_the_registry_has_no_referrers_api(reg):
    image = _image(reg.host, "fallback")
    with FaultProxy(reg.host) as proxy:
        client = Registry(proxy.host)
        sbom = attest.attach(client, REPO, image, "sbom", SBOM)
        prov = attest.attach(client, REPO, image, "provenance", PROVENANCE)
    hexpart = image.digest.split(":")[1]
    assert (sbom.where, sbom.tags) == ("tag", (f"sha256-{hexpart}.sbom", f"sha256-{hexpart}"))
    assert prov.tags[0] == f"sha256-{hexpart}.provenance"
    # what the registry holds: each kind tag is an artifact about the image; the index lists both
    for a in (sbom, prov):
        doc = _tag(reg.host, a.tags[0]).json()
        assert doc["subject"]["digest"] == image.digest and doc["artifactType"] == a.artifact_type
        assert doc["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert doc["layers"][0]["digest"] == a.payload_digest
    index = _tag(reg.host, f"sha256-{hexpart}")
    assert index.headers["Content-Type"] == OCI_INDEX
    assert [(d["digest"], d["artifactType"]) for d in index.json()["manifests"]] == \
        [(sbom.digest, attest.KINDS["sbom"][0]), (prov.digest, attest.KINDS["provenance"][0])]
    # each manifest went by digest first (a registry with the API answers OCI-Subject), then the tags
    puts = [e.path.rsplit("/", 1)[1] for e in proxy.requests("PUT", r"/manifests/")]
    assert puts == [sbom.digest, f"sha256-{hexpart}.sbom", f"sha256-{hexpart}",
                    prov.digest, f"sha256-{hexpart}.provenance", f"sha256-{hexpart}"]

    client = Registry(reg.host)
    found = attest.find(client, REPO, image.digest)
    assert [(f.kind, f.digest, f.via) for f in found] == [("sbom", sbom.digest, "index"),
                                                          ("provenance", prov.digest, "index")]
    payload, manifest = attest.fetch(client, REPO, image.digest, found[0])
    assert payload == SBOM and manifest["subject"]["digest"] == image.digest


def test_attaching_the_same_payload_again_writes_nothing_new(reg):
    image = _image(reg.host, "again")
    first = attest.attach(Registry(reg.host), REPO, image, "sbom", SBOM)
    prov = attest.attach(Registry(reg.host), REPO, image, "provenance", PROVENANCE)
    with FaultProxy(reg.host) as proxy:
        again = attest.attach(Registry(proxy.host), REPO, image, "sbom", SBOM)
        prov_again = attest.attach(Registry(proxy.host), REPO, image, "provenance", PROVENANCE)
    assert (again, prov_again) == (first, prov)
    assert proxy.requests("POST") == [] and proxy.requests("PUT") == []  # GETs and HEADs only
    index_tag = f"sha256-{image.digest.split(':')[1]}"
    assert [d["digest"] for d in _tag(reg.host, index_tag).json()["manifests"]] == [first.digest, prov.digest]


def test_an_index_lost_still_leaves_the_kind_tags(reg):
    image = _image(reg.host, "noindex")
    a = attest.attach(Registry(reg.host), REPO, image, "provenance", PROVENANCE)
    hexpart = image.digest.split(":")[1]
    r = requests.delete(f"http://{reg.host}/v2/{REPO}/manifests/{_tag(reg.host, f'sha256-{hexpart}').headers['Docker-Content-Digest']}",
                        timeout=10)
    if r.status_code == 405:  # deletes disabled in this registry's config: overwrite the index with an empty one
        empty = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
        assert requests.put(f"http://{reg.host}/v2/{REPO}/manifests/sha256-{hexpart}", data=empty, timeout=10,
                            headers={"Content-Type": OCI_INDEX}).status_code == 201
    found = attest.find(Registry(reg.host), REPO, image.digest)
    assert [(f.kind, f.digest, f.via) for f in found] == [("provenance", a.digest, "tag")]


def test_referrers_api_when_the_registry_answers_it(reg):
    image = _image(reg.host, "referrers")
    with FaultProxy(reg.host, referrers=True) as proxy:
        client = Registry(proxy.host)
        sbom = attest.attach(client, REPO, image, "sbom", SBOM)
        prov = attest.attach(client, REPO, image, "provenance", PROVENANCE)
        found = attest.find(client, REPO, image.digest)
        payload, _ = attest.fetch(client, REPO, image.digest, found[1])
    assert (sbom.where, sbom.tags, prov.where) == ("referrers", (), "referrers")
    hexpart = image.digest.split(":")[1]
    for tag in (f"sha256-{hexpart}", f"sha256-{hexpart}.sbom", f"sha256-{hexpart}.provenance"):
        assert _tag(reg.host, tag).status_code == 404  # no fallback tag where the API lists them
    assert [(f.kind, f.via) for f in found] == [("sbom", "referrers"), ("provenance", "referrers")]
    assert payload == PROVENANCE
    assert len(proxy.requests("GET", r"/referrers/")) == 1


def test_an_artifact_about_another_image_is_refused(reg):
    image = _image(reg.host, "subject")
    other = _image(reg.host, "other")
    wrong = attest.artifact_manifest("sbom", SBOM, other)
    client = Registry(reg.host)
    client.put_blob(REPO, attest.EMPTY)
    client.put_blob(REPO, SBOM)
    client.put_manifest(REPO, attest.fallback_tag(image.digest, "sbom"), wrong)
    (found,) = attest.find(client, REPO, image.digest)
    with pytest.raises(ImagegenError, match=f"its subject is not {image.digest}"):
        attest.fetch(client, REPO, image.digest, found)


def test_the_artifact_manifest_is_deterministic():
    subject = Manifest("sha256:" + "a" * 64, OCI_MANIFEST, b"{}")
    a = attest.artifact_manifest("provenance", PROVENANCE, subject)
    assert a.digest == attest.artifact_manifest("provenance", PROVENANCE, subject).digest
    assert a.digest != attest.artifact_manifest("provenance", PROVENANCE + b" ", subject).digest
    with pytest.raises(ValueError):
        attest.attach(None, REPO, subject, "vex", b"")
