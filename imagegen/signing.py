"""Signing a pushed image with a key the user provides, stored the way cosign stores it, and checking it.

Format (sigstore/cosign `specs/SIGNATURE_SPEC.md`, "Simple Signing" payloads stored in an OCI registry):

- **payload** (`application/vnd.dev.cosign.simplesigning.v1+json`, the "Red Hat simple signing" format):
  `{"critical": {"identity": {"docker-reference": "<registry>/<repository>"}, "image":
  {"docker-manifest-digest": "sha256:<hex>"}, "type": "cosign container image signature"},
  "optional": null}`;
- **signature**: ECDSA P-256 with SHA-256 over the payload bytes, ASN.1 DER, base64 in the layer's
  annotation `dev.cosignproject.cosign/signature`;
- **where**: an OCI image manifest whose layers are the signed payloads, under the tag
  `sha256-<hex>.sig` in the image's repository (cosign's tag scheme; each new signature adds a layer).

Keys: an unencrypted PKCS#8 PEM ECDSA P-256 private key (`openssl genpkey -algorithm EC -pkeyopt
ec_paramgen_curve:P-256 -out sign.key`; `openssl pkey -in sign.key -pubout -out sign.pub` gives the public
key). cosign's own encrypted key files ("ENCRYPTED SIGSTORE PRIVATE KEY") are not read: export the key
unencrypted (`cosign import-key-pair` goes the other way).

What is and is not checked here: `verify_signatures` checks each layer of the `.sig` manifest (its
payload digest against the registry's bytes, the payload's `docker-manifest-digest` against the image,
its `docker-reference` against the repository, the ECDSA signature against the public key). There is no
transparency log (Rekor) entry and no certificate: with cosign itself this is `cosign verify --key
sign.pub --insecure-ignore-tlog=true HOST/REPO@DIGEST`. cosign was not available on this machine, so
cosign's own acceptance of these signatures was not run here; the format follows the spec above.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .attest import fallback_tag
from .errors import ImagegenError, UserInputError
from .registry import OCI_MANIFEST, Manifest, Registry

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"


def payload(docker_reference: str, manifest_digest: str) -> bytes:
    """The simple-signing payload for `docker_reference` (registry/repository, no tag) at `manifest_digest`."""
    return json.dumps({"critical": {"identity": {"docker-reference": docker_reference},
                                    "image": {"docker-manifest-digest": manifest_digest},
                                    "type": SIGNATURE_TYPE},
                       "optional": None}, separators=(",", ":")).encode()


def load_private_key(path: Path):
    """An ECDSA P-256 private key from an unencrypted PEM file. Raises UserInputError (one line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    if b"ENCRYPTED" in data.split(b"\n", 1)[0]:
        raise UserInputError(f"{path} is an encrypted key: give an unencrypted PKCS#8 PEM ECDSA P-256 key "
                             "(e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{path} is not a PEM private key ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UserInputError(f"{path}: imagegen signs with ECDSA P-256 keys (cosign's default); this is not one")
    return key


def load_public_key(path: Path):
    """An ECDSA P-256 public key from a PEM file. Raises UserInputError (one line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UserInputError(f"cannot read the public key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{path} is not a PEM public key ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UserInputError(f"{path}: not an ECDSA P-256 public key")
    return key


def sign(reg: Registry, repo: str, image: Manifest, key) -> str:
    """Sign `image` (the pushed image manifest) in `reg`/`repo` with `key`; the `.sig` manifest gets one
    more layer unless an identical payload is already signed by this key. Returns the `.sig` manifest's
    digest."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    data = payload(f"{reg.host}/{repo}", image.digest)
    tag = fallback_tag(image.digest, "sig")
    current = reg.get_manifest(repo, tag)
    layers = list(current.json.get("layers") or []) if current is not None else []
    pub = key.public_key()
    for layer in layers:  # already signed with this key? (ECDSA signatures differ each time: check, do not compare)
        if layer.get("digest") == "sha256:" + hashlib.sha256(data).hexdigest() and \
                _valid(pub, data, (layer.get("annotations") or {}).get(SIG_ANNOTATION, "")):
            return current.digest
    signature = base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
    digest = reg.put_blob(repo, data)
    layers.append({"mediaType": PAYLOAD_TYPE, "digest": digest, "size": len(data),
                   "annotations": {SIG_ANNOTATION: signature}})
    # the payloads are stored uncompressed: each layer's diff_id is its digest
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}},
                        separators=(",", ":")).encode()
    cfg = reg.put_blob(repo, config)
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": len(config)},
            "layers": layers}
    raw = json.dumps(body, separators=(",", ":")).encode()
    m = Manifest("sha256:" + hashlib.sha256(raw).hexdigest(), OCI_MANIFEST, raw)
    reg.put_manifest(repo, tag, m)
    return m.digest


def _valid(pub, data: bytes, signature_b64: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pub.verify(base64.b64decode(signature_b64, validate=True), data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class Checked:
    """One signature layer checked: `ok`, and `why` when not."""

    payload_digest: str
    ok: bool
    why: str = ""


def verify_signatures(reg: Registry, repo: str, image_digest: str, pub) -> list[Checked]:
    """Every signature stored for `repo@image_digest` (the `.sig` tag), checked against `pub` (module
    docstring). An empty list: no signature at all. Raises ImagegenError when the `.sig` manifest is
    not a signature manifest."""
    m = reg.get_manifest(repo, fallback_tag(image_digest, "sig"))
    if m is None:
        return []
    out = []
    for layer in m.json.get("layers") or []:
        digest = layer.get("digest", "")
        if layer.get("mediaType") != PAYLOAD_TYPE:
            out.append(Checked(digest, False, f"not a simple-signing payload ({layer.get('mediaType')})"))
            continue
        try:
            data = reg.get_blob(repo, digest, limit=64 * 1024)
        except ImagegenError as exc:
            out.append(Checked(digest, False, str(exc)))
            continue
        try:
            critical = json.loads(data)["critical"]
            named = critical["image"]["docker-manifest-digest"]
            identity = critical["identity"]["docker-reference"]
        except (ValueError, KeyError, TypeError):
            out.append(Checked(digest, False, "the payload is not a cosign simple-signing payload"))
            continue
        if named != image_digest:
            out.append(Checked(digest, False, f"signs {named}, not {image_digest}"))
        elif identity != f"{reg.host}/{repo}":
            out.append(Checked(digest, False, f"signs {identity}, not {reg.host}/{repo}"))
        elif not _valid(pub, data, (layer.get("annotations") or {}).get(SIG_ANNOTATION, "")):
            out.append(Checked(digest, False, "the signature does not verify with this key"))
        else:
            out.append(Checked(digest, True))
    return out
