"""Pure logic of imagegen.bases and imagegen.doctor: refs, sources, dependency cutting, dpkg
status, failure messages, library inventory from a tar stream, doctor checks. No engine."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imagegen import bases, compat, doctor
from imagegen.bases import hook
from imagegen.errors import EngineError, ImagegenError, UserInputError

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32


def spec(**kw) -> compat.BaseSpec:
    data = {"source": "bootstrap", "libc": "glibc", "python": "3.11", "suite": "bookworm",
            "roles": {"runtime": {"variant": "extract", "packages": ["libc6", "debconf-"]},
                      "builder": {"variant": "minbase", "packages": ["python3.11"]}}}
    data.update(kw)
    return compat.BaseSpec.model_validate(data)


# --- refs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref,name,tag,registry", [
    (f"alpine:3.20@{DIGEST}", "alpine", "3.20", "docker.io"),
    (f"library/debian@{DIGEST}", "library/debian", None, "docker.io"),
    (f"127.0.0.1:5000/imagegen/bookworm-runtime@{DIGEST}", "127.0.0.1:5000/imagegen/bookworm-runtime", None,
     "127.0.0.1:5000"),
    (f"ghcr.io/org/img:v1@{DIGEST}", "ghcr.io/org/img", "v1", "ghcr.io"),
    (f"localhost/img@{DIGEST}", "localhost/img", None, "localhost"),
])
def test_parse_pinned(ref, name, tag, registry):
    p = bases.parse_pinned(ref)
    assert (p.name, p.tag, p.digest, p.registry) == (name, tag, DIGEST, registry)
    assert p.by_digest == f"{name}@{DIGEST}"
    assert p.original == ref


@pytest.mark.parametrize("ref", ["alpine:3.20", "alpine@sha256:abc", f"alpine@{DIGEST.upper()}", "",
                                 f"alpine:3.20@{DIGEST} ", "alpine@md5:" + "a" * 64])
def test_unpinned_refs_are_user_errors(ref):
    with pytest.raises(UserInputError) as exc:
        bases.parse_pinned(ref)
    assert exc.value.exit_code == 2
    assert "\n" not in str(exc.value) and "pinned by digest" in str(exc.value)


def test_shipped_registry_bases_are_pinned_and_bootstrap_roles_complete():
    for name, s in compat.bases().items():
        for role in ("runtime", "builder", "dev"):
            assert role in s.roles, (name, role)
            if s.source == "registry":
                bases.parse_pinned(s.role(role).ref or "")
            else:
                assert re.fullmatch(rf"imagegen/base-{re.escape(name)}-{role}:[0-9a-f]{{12}}", s.role_ref(name, role))


def test_pull_error_names_ref_registry_and_offline_remedy():
    p = bases.parse_pinned(f"alpine:3.20@{DIGEST}")
    err = bases.pull_error(p, 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host')
    text = str(err)
    assert isinstance(err, EngineError) and err.exit_code == 3
    assert f"alpine:3.20@{DIGEST}" in text and "docker.io is unreachable" in text
    assert "docker load" in text and "imagegen base build" in text and "\n" not in text
    err = bases.pull_error(p, "manifest unknown: manifest unknown")
    assert "digest not found" in str(err)


# --- packages, sources, epoch -----------------------------------------------------------------


def test_packages_split_and_conflict():
    assert bases.packages_split(["libc6", "debconf-", "tzdata"]) == (["libc6", "tzdata"], {"debconf"})
    with pytest.raises(UserInputError):
        bases.packages_split(["debconf", "debconf-"])


def test_apt_sources_plain_snapshot_and_unstable():
    assert bases.apt_sources(spec()) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    snap = bases.apt_sources(spec(snapshot="20250101T000000Z"))
    assert snap[0] == ("deb [check-valid-until=no] http://snapshot.debian.org/archive/debian/20250101T000000Z "
                       "bookworm main")
    assert snap[2].endswith("archive/debian-security/20250101T000000Z bookworm-security main")
    assert bases.apt_sources(spec(suite="sid")) == ["deb http://deb.debian.org/debian sid main"]
    custom = bases.apt_sources(spec(mirror="http://mirror.example/deb"))
    assert len(custom) == 2  # no guessable security mirror
    with pytest.raises(UserInputError):
        bases.apt_sources(spec(snapshot="2025-01-01"))


def test_epochs():
    assert bases.snapshot_epoch("20250101T000000Z") == 1735689600
    text = "Origin: Debian\nSuite: oldstable\nDate: Sat, 11 Jul 2026 10:16:37 UTC\nValid-Until: x\n"
    assert bases.release_date_epoch(text) == 1783764997
    with pytest.raises(ImagegenError):
        bases.release_date_epoch("Origin: Debian\n")


def test_source_date_epoch_unreachable_mirror_names_it():
    with pytest.raises(ImagegenError) as exc:
        bases.source_date_epoch(spec(mirror="http://127.0.0.1:9/debian"))
    assert "http://127.0.0.1:9/debian/dists/bookworm/InRelease" in str(exc.value)


# --- Debian control data ----------------------------------------------------------------------

CONTROL = """Package: tzdata
Version: 2025b-0+deb12u1
Architecture: all
Depends: debconf (>= 0.5) | debconf-2.0
Description: time zone and daylight-saving time data
 This package contains data required for the implementation of
 standard local time for many representative locations.
"""


def test_deb822_roundtrip_keeps_continuations():
    [para] = bases.parse_deb822(CONTROL)
    assert para["Package"] == "tzdata" and para["Description"].count("\n") == 2
    assert hook.format_deb822(para) == CONTROL


def test_parse_depends():
    assert hook.parse_depends("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any") == [
        ["libc6"], ["debconf", "debconf-2.0"], ["python3"]]
    assert hook.parse_depends("") == []


# A slice of what apt downloads for the bookworm runtime (real relationships, fewer packages).
DOWNLOADED = {
    "libc6": {"Package": "libc6", "Depends": "libgcc-s1"},
    "libgcc-s1": {"Package": "libgcc-s1", "Depends": "gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)"},
    "gcc-12-base": {"Package": "gcc-12-base"},
    "base-files": {"Package": "base-files", "Pre-Depends": "awk"},
    "mawk": {"Package": "mawk", "Depends": "libc6 (>= 2.29)", "Provides": "awk"},
    "ca-certificates": {"Package": "ca-certificates", "Depends": "openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0"},
    "openssl": {"Package": "openssl", "Depends": "libc6, libssl3"},
    "libssl3": {"Package": "libssl3", "Depends": "libc6 (>= 2.34)"},
    "debconf": {"Package": "debconf", "Pre-Depends": "perl-base (>= 5.20.1-3~)", "Provides": "debconf-2.0"},
    "perl-base": {"Package": "perl-base", "Pre-Depends": "libc6, dpkg (>= 1.17.17)"},
    "dpkg": {"Package": "dpkg", "Pre-Depends": "tar"},
    "tar": {"Package": "tar"},
    "readline-common": {"Package": "readline-common", "Depends": "dpkg (>= 1.15.4) | install-info"},
    "python3.11-minimal": {"Package": "python3.11-minimal", "Depends": "libssl3 (>= 3.0.0), libc6"},
}


def test_resolve_keep_cuts_maintainer_script_tools():
    res = hook.resolve_keep(["libc6", "base-files", "ca-certificates", "readline-common", "python3.11-minimal"],
                             {"debconf", "dpkg", "perl-base", "mawk", "openssl", "tar"}, DOWNLOADED)
    assert res.keep == ["base-files", "ca-certificates", "gcc-12-base", "libc6", "libgcc-s1", "libssl3",
                        "python3.11-minimal", "readline-common"]
    assert res.dropped_clauses == {
        "base-files": ["awk"],
        "ca-certificates": ["openssl (>= 1.1.1)", "debconf (>= 0.5) | debconf-2.0"],
        "readline-common": ["dpkg (>= 1.15.4) | install-info"],
    }


def test_resolve_keep_follows_virtual_providers_when_not_cut():
    res = hook.resolve_keep(["base-files"], set(), DOWNLOADED)
    assert "mawk" in res.keep and res.dropped_clauses == {}


def test_resolve_keep_requested_but_missing():
    with pytest.raises(ImagegenError, match="nosuch"):
        hook.resolve_keep(["nosuch"], set(), DOWNLOADED)


def test_status_paragraph_is_consistent_for_apt():
    keep = {"ca-certificates", "libc6"}
    fields = {"Package": "ca-certificates", "Version": "20230311", "Architecture": "all",
              "Depends": "openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0, libc6",
              "Description": "Common CA certificates\n more"}
    para = hook.status_paragraph(fields, keep, set())
    assert list(para)[:2] == ["Package", "Status"] and para["Status"] == "install ok installed"
    assert para["Depends"] == "libc6"
    assert para["Imagegen-Dropped-Depends"] == "openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0"
    # an alternative satisfied through Provides stays
    para = hook.status_paragraph({"Package": "x", "Depends": "awk"}, {"x"}, {"awk"})
    assert para["Depends"] == "awk" and "Imagegen-Dropped-Depends" not in para


def test_doc_excludes_keep_copyright():
    assert hook.excluded("usr/share/doc/libc6/changelog.Debian.gz")
    assert not hook.excluded("usr/share/doc/libc6/copyright")
    assert hook.excluded("usr/share/doc/ca-certificates/examples/local/debian/copyright")
    assert hook.excluded("usr/share/man/man1/python3.11.1.gz")
    assert hook.excluded("usr/share/locale/de/LC_MESSAGES/libc.mo")
    assert not hook.excluded("usr/share/locale/locale.alias")
    assert not hook.excluded("usr/share/zoneinfo/UTC")
    assert hook.canonical("lib/x86_64-linux-gnu/libc.so.6") == "usr/lib/x86_64-linux-gnu/libc.so.6"
    assert hook.canonical("etc/passwd") == "etc/passwd"


# --- mmdebstrap command and failures ------------------------------------------------------------


def test_mmdebstrap_argv_runtime_and_builder(tmp_path):
    s = spec()
    rt = bases.mmdebstrap_argv(s, "runtime", tmp_path / "r.tar", tmp_path / "h.json", "root")
    assert "--variant=extract" in rt and "--include=libc6" in rt and "--mode=root" in rt
    assert any(a.startswith("--extract-hook=") and "imagegen.bases --hook runtime" in a for a in rt)
    assert "--skip=cleanup/apt,cleanup/mmdebstrap" in rt
    assert rt[-5:] == ["bookworm", str(tmp_path / "r.tar"), *bases.apt_sources(s)]
    b = bases.mmdebstrap_argv(s, "builder", tmp_path / "b.tar", tmp_path / "h.json", "unshare")
    assert "--variant=minbase" in b and "--dpkgopt=path-exclude=/usr/share/doc/*" in b
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in b
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" in b
    assert any(a.startswith("--customize-hook=") and "--hook minbase" in a for a in b)
    bad = spec(roles={"builder": {"variant": "minbase", "packages": ["python3.11", "debconf-"]}})
    with pytest.raises(UserInputError, match="extract variant"):
        bases.mmdebstrap_argv(bad, "builder", tmp_path / "b.tar", tmp_path / "h.json", "root")


def test_explain_failure_names_package_and_mirror():
    s = spec()
    msg = bases.explain_failure([
        "I: downloading packages with apt...",
        "E: Failed to fetch http://deb.debian.org/debian/pool/main/p/python3.11/python3.11-minimal_3.11.2-6_amd64.deb"
        "  404  Not Found [IP: 1.2.3.4 80]",
        "E: apt-get --yes install failed",
    ], s)
    assert msg.startswith("download of package python3.11-minimal failed from http://deb.debian.org/debian")
    assert "404" in msg
    assert bases.explain_failure(["E: Unable to locate package nosuch-pkg"], s) == (
        "package nosuch-pkg not found in bookworm at http://deb.debian.org/debian")
    snap = bases.explain_failure(["E: Unable to locate package x"], spec(snapshot="20250101T000000Z"))
    assert "snapshot.debian.org (20250101T000000Z)" in snap
    assert "mirror" in bases.explain_failure(["E: something odd"], s)
    assert bases.explain_failure([], s)


# --- cleanup ------------------------------------------------------------------------------------


def test_safe_rmtree_removes_readonly_dirs(tmp_path):
    d = tmp_path / "w" / "rootfs" / "usr"
    d.mkdir(parents=True)
    (d / "f").write_text("x")
    d.chmod(0o555)
    bases.safe_rmtree(tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="bind mounts need root")
def test_safe_rmtree_never_empties_a_bind_mount(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("data")
    work = tmp_path / "work"
    (work / "chroot" / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(precious), str(work / "chroot" / "dev")], check=True)
    try:
        bases.safe_rmtree(work)
    finally:
        subprocess.run(["umount", str(work / "chroot" / "dev")], capture_output=True)
    assert (precious / "keep").read_text() == "data"
    assert not work.exists()


# --- library inventory --------------------------------------------------------------------------


def _host_lib(name: str) -> Path:
    for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        p = Path(d) / name
        if p.exists():
            return p.resolve()
    pytest.skip(f"host has no {name}")


def _tar(members: list[tuple[str, bytes | str | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif isinstance(data, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_sonames_from_tar_reads_names_links_and_soname():
    libz = _host_lib("libz.so.1").read_bytes()
    stream = _tar([
        ("usr/lib/x86_64-linux-gnu", None),
        ("usr/lib/x86_64-linux-gnu/librenamed.so.9.9", libz),  # file name differs from its SONAME
        ("usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2.3"),
        ("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        ("usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", b"not elf"),
        ("opt/venv/lib/libbar.so.2", b"\x7fELF"),
        ("usr/lib/x86_64-linux-gnu/libnotelf.so", b"INPUT(-lc)"),
        ("usr/lib/x86_64-linux-gnu/README.txt", b"x"),
    ])
    names = bases.sonames_from_tar(stream)
    assert names == {"librenamed.so.9.9", "libz.so.1", "libfoo.so.1", "ld-linux-x86-64.so.2", "libnotelf.so"}


def test_elf_soname_none_for_non_elf():
    assert bases.elf_soname(b"hello") is None
    assert bases.elf_soname(b"\x7fELF" + b"\0" * 10) is None


def test_chunk_reader_streams():
    r = io.BufferedReader(bases._ChunkReader([b"ab", b"", b"cde"]), 2)
    assert r.read() == b"abcde"


# --- doctor -------------------------------------------------------------------------------------


def test_doctor_engine_and_gpu_checks():
    c = doctor.check_engine(None, None, "Docker engine not reachable at unix:///x")
    assert c.status == "fail" and c.required and "dockerd" in c.remedy
    ok = doctor.check_engine({"DockerRootDir": "/var/lib/docker"}, {"Version": "20.10.24", "ApiVersion": "1.41"}, "")
    assert ok.status == "ok" and "Docker 20.10.24 (API 1.41)" in ok.detail
    assert doctor.check_storage({"Driver": "vfs"}).status == "warn"
    assert doctor.check_storage({"Driver": "overlay2"}).status == "ok"
    if not shutil.which("nvidia-smi"):
        g = doctor.check_gpu({"Runtimes": {"runc": {}}})
        assert g.status == "note" and "skipped" in g.detail
        assert doctor.check_gpu({"Runtimes": {"runc": {}, "nvidia": {}}}).status == "ok"


def test_doctor_disk_and_tools(tmp_path):
    assert doctor.check_disk("x", tmp_path / "not" / "yet", threshold=1).status == "ok"  # nearest existing parent
    low = doctor.check_disk("x", tmp_path, threshold=10 ** 18)
    assert low.status == "warn" and "GPU cell" in low.detail and low.remedy
    assert doctor.check_disk("x", None).status == "warn"
    missing = doctor.check_tool("nosuch", ["imagegen-no-such-tool"], ["--version"], "p", "apt-get install x",
                                required=True)
    assert missing.status == "fail" and "setup.sh" in missing.remedy
    assert doctor.check_tool("py", [Path(sys.executable).name], ["--version"], "p", "r").status in ("ok", "warn")


def test_doctor_pip_ca(monkeypatch, tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("x")
    monkeypatch.setenv("PIP_CERT", str(cert))
    c = doctor.check_pip()
    assert c.status == "ok" and str(cert) in c.detail and "wheelhouse" in c.detail
    monkeypatch.setenv("PIP_CERT", str(tmp_path / "missing.pem"))
    assert doctor.check_pip().status == "warn"


def test_doctor_exits_1_with_json_when_engine_is_down(tmp_path):
    code = ("import sys\nfrom imagegen.cli.base_cmds import doctor\nfrom imagegen.errors import ImagegenError\n"
            "try:\n    doctor(json_out=True, offline=True)\n"
            "except ImagegenError as e:\n    print('error:', e, file=sys.stderr); sys.exit(e.exit_code)\n")
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no.sock", NO_COLOR="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is False
    engine = next(c for c in report["checks"] if c["name"] == "engine")
    assert engine["status"] == "fail" and engine["required"]
    assert "required check(s) failed: engine" in res.stderr and "Traceback" not in res.stderr


def test_doctor_says_whether_debian_indexes_are_verified(monkeypatch, tmp_path):
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    monkeypatch.setenv("IMAGEGEN_DEBIAN_KEYRING", str(keyring))
    monkeypatch.setenv("PATH", str(tmp_path))  # no gpgv on PATH
    c = doctor.check_archive_keyring()
    assert c.status == "warn" and "gpgv" in c.detail and "debian-archive-keyring" in c.remedy
    (tmp_path / "gpgv").write_text("#!/bin/sh\n")
    (tmp_path / "gpgv").chmod(0o755)
    assert doctor.check_archive_keyring().status == "ok"
    keyring.unlink()
    assert str(keyring) in doctor.check_archive_keyring().detail


def test_engine_kind_from_its_info():
    """Docker 26 on the containerd image store (measured here) vs Debian 12's 20.10 on overlay2."""
    from imagegen import engine

    classic = engine.describe({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]],
                               "ServerVersion": "20.10.24+dfsg1"}, {"ApiVersion": "1.41"})
    assert (classic.image_store, classic.api_version, classic.server_version) == ("graphdriver", "1.41", "20.10.24+dfsg1")
    assert classic.id_is_config_digest
    info = {"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
            "ServerVersion": "26.1.5+dfsg1"}
    cstore = engine.describe(info, {"Version": "26.1.5+dfsg1", "ApiVersion": "1.45"})
    assert cstore.image_store == "containerd" and not cstore.id_is_config_digest
    check = doctor.check_storage(info)
    assert check.status == "note" and "manifest digests" in check.detail and check.name == "image store"
    assert doctor.check_storage({"Driver": "overlay2", "DriverStatus": []}).status == "ok"
