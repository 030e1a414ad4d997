"""Signing with a user's key, stored as cosign stores signatures (imagegen.signing), against Debian's
`docker-registry` on loopback: the `.sig` manifest's shape (cosign SIGNATURE_SPEC), a signature that
verifies with the right key only, one payload per key, and `imagegen verify HOST/REPO:TAG --key` failing
closed (exit 1) on no signature or a bad one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from registry_fixture import LocalRegistry, push_image  # noqa: E402

from imagegen import signing  # noqa: E402
from imagegen.errors import UserInputError  # noqa: E402
from imagegen.registry import OCI_MANIFEST, Manifest, Registry  # noqa: E402

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
REPO = "imagegen/signed"


def _image(host: str, marker: str) -> Manifest:
    raw, digest = push_image(host, REPO, marker)
    return Manifest(digest, OCI_MANIFEST, raw)


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture(scope="module")
def reg():
    with LocalRegistry() as r:
        yield r


def _verify_cli(ref: str, pub: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagegen", "verify", ref, "--key", str(pub)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120)


def test_a_signature_in_cosigns_format_verifies_with_its_key_only(reg, tmp_path):
    image = _image(reg.host, "signed")
    priv, pub = _keys(tmp_path, "mine")
    _, other_pub = _keys(tmp_path, "other")
    client = Registry(reg.host)
    sig_digest = signing.sign(client, REPO, image, signing.load_private_key(priv))
    # the .sig manifest as cosign's spec has it
    tag = f"sha256-{image.digest.split(':')[1]}.sig"
    doc = requests.get(f"http://{reg.host}/v2/{REPO}/manifests/{tag}", headers={"Accept": OCI_MANIFEST},
                       timeout=10).json()
    (layer,) = doc["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    blob = requests.get(f"http://{reg.host}/v2/{REPO}/blobs/{layer['digest']}", timeout=10).content
    assert json.loads(blob)["critical"] == {"identity": {"docker-reference": f"{reg.host}/{REPO}"},
                                            "image": {"docker-manifest-digest": image.digest},
                                            "type": "cosign container image signature"}
    pubkey = serialization.load_pem_public_key(pub.read_bytes())
    pubkey.verify(base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"]), blob,
                  ec.ECDSA(hashes.SHA256()))  # raises if it does not verify
    assert doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    # signing again with the same key adds nothing
    assert signing.sign(client, REPO, image, signing.load_private_key(priv)) == sig_digest
    checked = signing.verify_signatures(client, REPO, image.digest, signing.load_public_key(pub))
    assert [c.ok for c in checked] == [True]
    wrong = signing.verify_signatures(client, REPO, image.digest, signing.load_public_key(other_pub))
    assert [(c.ok, c.why) for c in wrong] == [(False, "the signature does not verify with this key")]
    r = _verify_cli(f"{reg.host}/{REPO}:signed", pub)
    assert r.returncode == 0 and "1 of 1 signature(s) verify" in r.stdout, r.stderr
    r = _verify_cli(f"{reg.host}/{REPO}:signed", other_pub)
    assert r.returncode == 1 and "no signature verifies: the signature does not verify with this key" in r.stderr


def test_no_signature_fails_closed(reg, tmp_path):
    _image(reg.host, "unsigned")
    _, pub = _keys(tmp_path, "k")
    r = _verify_cli(f"{reg.host}/{REPO}:unsigned", pub)
    assert r.returncode == 1 and "error: " in r.stderr and "no signature:" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_signature_copied_from_another_image_does_not_count(reg, tmp_path):
    a, b = _image(reg.host, "a"), _image(reg.host, "b")
    priv, pub = _keys(tmp_path, "k")
    client = Registry(reg.host)
    signing.sign(client, REPO, a, signing.load_private_key(priv))
    sig_a = client.get_manifest(REPO, f"sha256-{a.digest.split(':')[1]}.sig")
    client.put_manifest(REPO, f"sha256-{b.digest.split(':')[1]}.sig", sig_a)  # a's signature under b's tag
    checked = signing.verify_signatures(client, REPO, b.digest, signing.load_public_key(pub))
    assert [(c.ok, c.why.startswith(f"signs {a.digest}")) for c in checked] == [(False, True)]


def test_keys_that_are_not_p256_pem_are_refused_in_one_line(tmp_path):
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(UserInputError, match="not a PEM private key"):
        signing.load_private_key(tmp_path / "bad.key")
    (tmp_path / "enc.key").write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nxx\n")
    with pytest.raises(UserInputError, match="encrypted key"):
        signing.load_private_key(tmp_path / "enc.key")
    k384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.key").write_bytes(k384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    with pytest.raises(UserInputError, match="ECDSA P-256"):
        signing.load_private_key(tmp_path / "p384.key")
