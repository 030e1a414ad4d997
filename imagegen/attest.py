"""Evidence attached to a pushed image: OCI 1.1 artifacts whose `subject` is the image's manifest.

An artifact is an OCI image manifest (OCI image-spec 1.1, "Guidelines for Artifact Usage") with an
`artifactType`, the empty config (`application/vnd.oci.empty.v1+json`, the 2 bytes `{}`), one layer
holding the payload, and `subject`, the descriptor of the image manifest it describes. Kinds
(`KINDS`): `sbom` (CycloneDX JSON), `provenance` (an in-toto Statement with a SLSA v1 predicate),
`sig` (a signature; see `signing`).

Where it is stored:
- **referrers**: the manifest is pushed by digest; a registry that processes `subject` answers the
  `OCI-Subject` header and lists it under `GET /v2/<name>/referrers/<digest>` (OCI distribution-spec
  1.1, "Listing Referrers").
- **tag fallback**, where the registry does not (Docker's distribution 2.x, which Debian ships;
  ghcr.io, NVIDIA/aicr#1957): the manifest is also tagged `sha256-<hex>.<kind>` (the scheme cosign uses
  for `.sig`/`.att`/`.sbom`), and the referrers tag schema's index at `sha256-<hex>` (distribution-spec
  1.1, "Referrers Tag Schema") gets its descriptor, so `oras discover` and other 1.1 clients find it too.

`find` reads them back (the referrers API first, else the `sha256-<hex>` index, else the `.<kind>`
tags) and `fetch` returns a payload, checked against the digests that name it. Errors: RegistryError
(one line), ImagegenError for an artifact that is not what its descriptor says.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from . import labels
from .errors import ImagegenError
from .registry import OCI_INDEX, OCI_MANIFEST, Manifest, Registry

EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"

#: kind -> (artifactType of the manifest, mediaType of its one layer)
KINDS: dict[str, tuple[str, str]] = {
    "sbom": ("application/vnd.cyclonedx+json", "application/vnd.cyclonedx+json"),
    "provenance": ("application/vnd.in-toto+json", "application/vnd.in-toto+json"),
    "sig": ("application/vnd.dev.cosign.artifact.sig.v1+json", "application/vnd.dev.cosign.simplesigning.v1+json"),
}
KIND_OF_TYPE = {artifact_type: kind for kind, (artifact_type, _) in KINDS.items()}
ANNOTATION_KIND = labels.ATTESTATION_KIND


@dataclass(frozen=True)
class Attached:
    """One artifact as stored: `digest` of its manifest, `where` ("referrers": the registry lists it by
    its subject; "tag": found through the fallback tags `tags`)."""

    kind: str
    digest: str
    artifact_type: str
    size: int  # bytes of the manifest
    payload_digest: str
    payload_size: int  # bytes
    where: str
    tags: tuple[str, ...] = ()


def fallback_tag(subject_digest: str, kind: str | None = None) -> str:
    """`sha256-<hex>` (the referrers tag schema's index) or `sha256-<hex>.<kind>`."""
    algo, _, hexpart = subject_digest.partition(":")
    return f"{algo}-{hexpart}" + (f".{kind}" if kind else "")


def _manifest(body: dict) -> Manifest:
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    media = body["mediaType"]
    return Manifest("sha256:" + hashlib.sha256(raw).hexdigest(), media, raw)


def artifact_manifest(kind: str, payload: bytes, subject: Manifest, annotations: dict[str, str] | None = None
                      ) -> Manifest:
    """The OCI 1.1 artifact manifest for `payload` (bytes) about `subject` (the image manifest as the
    registry serves it). Deterministic: the same payload and subject give the same digest."""
    artifact_type, layer_type = KINDS[kind]
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": "sha256:" + hashlib.sha256(EMPTY).hexdigest(),
                   "size": len(EMPTY), "data": base64.b64encode(EMPTY).decode()},
        "layers": [{"mediaType": layer_type, "digest": "sha256:" + hashlib.sha256(payload).hexdigest(),
                    "size": len(payload), **({"annotations": annotations} if annotations else {})}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.raw)},
        "annotations": {ANNOTATION_KIND: kind},
    }
    return _manifest(body)


def _descriptor(m: Manifest, kind: str) -> dict:
    return {"mediaType": m.media_type, "digest": m.digest, "size": len(m.raw),
            "artifactType": KINDS[kind][0], "annotations": {ANNOTATION_KIND: kind}}


def attach(reg: Registry, repo: str, subject: Manifest, kind: str, payload: bytes, *,
           layer_annotations: dict[str, str] | None = None) -> Attached:
    """Store `payload` as a `kind` artifact about `subject` in `repo`: blobs, then the manifest by digest;
    where the registry did not process `subject`, the fallback tags too (module docstring). Idempotent:
    the same payload again writes nothing (GETs only; the index keeps one descriptor per digest; an older
    artifact of the same kind stays listed, as with the referrers API)."""
    if kind not in KINDS:
        raise ValueError(f"unknown attestation kind {kind!r}")
    m = artifact_manifest(kind, payload, subject, layer_annotations)
    payload_digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    if reg.get_manifest(repo, m.digest) is None:
        reg.put_blob(repo, EMPTY)
        reg.put_blob(repo, payload)
        by_subject = reg.put_manifest_digest(repo, m)
    else:  # attached before: only what is missing is written
        listed = reg.referrers(repo, subject.digest)
        by_subject = listed is not None and m.digest in [d.get("digest") for d in listed]
    tags: tuple[str, ...] = ()
    if not by_subject:
        kind_tag = fallback_tag(subject.digest, kind)
        held = reg.get_manifest(repo, kind_tag)
        if held is None or held.digest != m.digest:
            reg.put_manifest(repo, kind_tag, m)
        index_tag = fallback_tag(subject.digest)
        _add_to_index(reg, repo, index_tag, _descriptor(m, kind))
        tags = (kind_tag, index_tag)
    return Attached(kind, m.digest, KINDS[kind][0], len(m.raw), payload_digest, len(payload),
                    "referrers" if by_subject else "tag", tags)


def _add_to_index(reg: Registry, repo: str, tag: str, descriptor: dict) -> None:
    """Add `descriptor` to the referrers tag schema's index at `tag` (created when absent). A
    read-modify-write: two publishers of the same digest at once can lose one entry, which the `.kind`
    tag still finds."""
    current = reg.get_manifest(repo, tag)
    manifests = []
    if current is not None and current.media_type == OCI_INDEX:
        manifests = list(current.json.get("manifests") or [])
        if descriptor["digest"] in [d.get("digest") for d in manifests]:
            return  # listed already: the index is left exactly as it is
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*manifests, descriptor]}
    new = _manifest(body)
    if current is None or current.digest != new.digest:
        reg.put_manifest(repo, tag, new)


@dataclass(frozen=True)
class Found:
    """An artifact found for a subject: its manifest digest and kind, and how it was found
    ("referrers", "index": the `sha256-<hex>` tag, "tag": the `.<kind>` tag)."""

    kind: str
    digest: str
    via: str


def find(reg: Registry, repo: str, subject_digest: str) -> list[Found]:
    """The artifacts about `repo@subject_digest` that imagegen knows the kind of (`KINDS`), newest
    last, one per manifest digest. The referrers API when the registry has one; else the fallback
    index and the `.<kind>` tags."""
    found: dict[str, Found] = {}
    listed = reg.referrers(repo, subject_digest)
    if listed is not None:
        for d in listed:
            kind = KIND_OF_TYPE.get(d.get("artifactType", ""))
            if kind:
                found.setdefault(d["digest"], Found(kind, d["digest"], "referrers"))
        return list(found.values())
    index = reg.get_manifest(repo, fallback_tag(subject_digest))
    if index is not None and index.media_type == OCI_INDEX:
        for d in index.json.get("manifests") or []:
            kind = KIND_OF_TYPE.get(d.get("artifactType", ""))
            if kind:
                found.setdefault(d["digest"], Found(kind, d["digest"], "index"))
    for kind in KINDS:
        m = reg.get_manifest(repo, fallback_tag(subject_digest, kind))
        if m is not None and m.digest not in found:
            found[m.digest] = Found(kind, m.digest, "tag")
    return list(found.values())


def fetch(reg: Registry, repo: str, subject_digest: str, found: Found, *, limit: int = 64 * 1024 * 1024
          ) -> tuple[bytes, dict]:
    """The payload of `found` (bytes, checked against its layer digest) and its manifest's JSON. Raises
    ImagegenError when the manifest is not a `found.kind` artifact about `subject_digest`."""
    m = reg.get_manifest(repo, found.digest)
    if m is None:
        raise ImagegenError(f"{reg.host}/{repo}@{found.digest}: the {found.kind} artifact is listed but absent")
    body = m.json
    where = f"{reg.host}/{repo}@{found.digest}"
    if (body.get("subject") or {}).get("digest") != subject_digest:
        raise ImagegenError(f"{where}: its subject is not {subject_digest}")
    if body.get("artifactType") != KINDS[found.kind][0] or len(body.get("layers") or []) != 1:
        raise ImagegenError(f"{where}: not a {found.kind} artifact ({body.get('artifactType')})")
    layer = body["layers"][0]
    return reg.get_blob(repo, layer["digest"], limit=limit), body


def parse_ref(ref: str) -> tuple[str, str, str]:
    """(registry host, repository, tag or digest) of `host[:port]/repo[:tag|@digest]`. Raises
    UserInputError when `ref` names no registry host (a host has a `.` or `:`, or is `localhost`)."""
    from .errors import UserInputError

    host, _, rest = ref.partition("/")
    if not rest or not ("." in host or ":" in host or host == "localhost"):
        raise UserInputError(f"{ref}: name the image in its registry, host/repository:tag or @digest")
    if "@" in rest:
        repo, _, reference = rest.partition("@")
    else:
        repo, _, reference = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "latest")
    return host, repo, reference


def summarize(kind: str, payload: bytes) -> dict:
    """A few facts about a payload, for a listing: an SBOM's component count, a provenance's cell and
    revision."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return {"bytes": len(payload), "json": False}
    if kind == "sbom":
        return {"bytes": len(payload), "format": f"{doc.get('bomFormat')} {doc.get('specVersion')}",
                "components": len(doc.get("components") or [])}
    if kind == "provenance":
        pred = doc.get("predicate") or {}
        ext = (pred.get("buildDefinition") or {}).get("externalParameters") or {}
        return {"bytes": len(payload), "predicateType": doc.get("predicateType"), "cell": ext.get("cell"),
                "revision": (ext.get("source") or {}).get("revision"),
                "subject": [s.get("digest") for s in doc.get("subject") or []]}
    return {"bytes": len(payload)}


def read_evidence(reg: Registry, repo: str, reference: str) -> tuple[str, list[dict]]:
    """(the image manifest digest `reference` stands for on linux/amd64, [{kind, digest, via, summary}])
    for every artifact found about it; each payload fetched and checked (`fetch`). Raises ImagegenError
    when the registry has no such image."""
    m = reg.get_manifest(repo, reference)
    if m is None:
        raise ImagegenError(f"{reg.host}/{repo}:{reference}: no such image in the registry")
    image = reg.image_for(repo, m) or m
    rows = []
    for f in find(reg, repo, image.digest):
        if f.kind == "sig":  # cosign's signature manifest: no subject; each payload names the image it signs
            rows.append({"kind": f.kind, "digest": f.digest, "via": f.via, **_signatures(reg, repo, image.digest, f)})
            continue
        payload, _ = fetch(reg, repo, image.digest, f)
        rows.append({"kind": f.kind, "digest": f.digest, "via": f.via, **summarize(f.kind, payload)})
    return image.digest, rows


def _signatures(reg: Registry, repo: str, image_digest: str, found: Found) -> dict:
    """What a `.sig` manifest holds, without a key: how many signatures, and how many of their payloads
    name this image (cosign's simple signing: `critical.image.docker-manifest-digest`). The signatures
    themselves are checked by `imagegen verify REF --key PUB`."""
    m = reg.get_manifest(repo, found.digest)
    if m is None:
        raise ImagegenError(f"{reg.host}/{repo}@{found.digest}: the sig artifact is listed but absent")
    layers = m.json.get("layers") or []
    naming = 0
    for layer in layers:
        try:
            doc = json.loads(reg.get_blob(repo, layer.get("digest", ""), limit=64 * 1024))
            naming += doc["critical"]["image"]["docker-manifest-digest"] == image_digest
        except (ImagegenError, ValueError, KeyError, TypeError):
            pass
    return {"signatures": len(layers), "naming_this_image": naming,
            "checked": "no: `imagegen verify REF --key PUB` checks them against your key"}
