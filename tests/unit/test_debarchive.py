"""Debian archive files fetched the way apt does, and sonames resolved by package name (no network:
a fake archive on 127.0.0.1, its InRelease signed with a throwaway key made with gpg here)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
import zstandard

from imagegen import closure, debarchive, settings
from imagegen.closure import ElfObject, ElfScan, compute_closure
from imagegen.errors import ImagegenError

pytestmark = pytest.mark.unit

SUITE = "trixie"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a throwaway archive key ---------------------------------------------------------------------


class Signer:
    """A key made in a private GNUPGHOME; ``keyring`` is its public key for gpgv."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {**os.environ, "GNUPGHOME": str(home)}
        self._gpg("--quick-gen-key", "imagegen test archive <archive@example.invalid>", "ed25519", "sign", "never")
        self.keyring = home / "archive-keyring.gpg"
        self.keyring.write_bytes(self._gpg("--export"))

    def _gpg(self, *args: str, data: bytes | None = None) -> bytes:
        res = subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                             input=data, capture_output=True, env=self.env, timeout=60, check=False)
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        return res.stdout

    def clearsign(self, text: str) -> bytes:
        return self._gpg("--clearsign", data=text.encode())

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def signer():
    if not shutil.which("gpg") or not shutil.which("gpgv"):
        pytest.fail("gpg and gpgv are needed to sign and verify the fake archive (apt-get install gpg gpgv)")
    home = Path(tempfile.mkdtemp(prefix="ig-gpg-"))  # short: gpg-agent's socket path is limited
    home.chmod(0o700)
    s = Signer(home)
    yield s
    s.close()


# --- a fake archive --------------------------------------------------------------------------------


def make_deb(package: str, version: str, files: dict[str, bytes | str], compression: str = "xz") -> bytes:
    """A .deb (ar: debian-binary, control.tar.xz, data.tar.<compression>). ``files``: path -> bytes,
    or -> "->target" for a symlink."""

    def tar(members: dict[str, bytes | str]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            dirs = sorted({"/".join(p.split("/")[:i]) for p in members for i in range(1, p.count("/") + 1)})
            for d in dirs:
                ti = tarfile.TarInfo(f"./{d}/")
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            for path, content in sorted(members.items()):
                ti = tarfile.TarInfo(f"./{path}")
                if isinstance(content, str):
                    ti.type, ti.linkname = tarfile.SYMTYPE, content[2:]
                    tf.addfile(ti)
                else:
                    ti.size, ti.mode = len(content), 0o644
                    tf.addfile(ti, io.BytesIO(content))
        return buf.getvalue()

    control = f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.invalid>\nDescription: t\n"
    data = tar(files)
    packed = {"xz": lzma.compress, "gz": lambda b: gzip.compress(b, mtime=0),
              "zst": lambda b: zstandard.ZstdCompressor().compress(b)}[compression](data)
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(tar({"control": control.encode()}))),
               (f"data.tar.{compression}", packed)]
    out = b"!<arch>\n"
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body
        if len(body) % 2:
            out += b"\n"
    return out


def stanza(package: str, deb: bytes, filename: str, version: str = "1.0-1", listed_sha: str | None = None) -> str:
    return (f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nFilename: {filename}\n"
            f"Size: {len(deb)}\nSHA256: {listed_sha or sha(deb)}\nDescription: t\n\n")


class Archive:
    """``root`` is served as the mirror. Files are written under ``dists/<suite>/``; what InRelease
    lists can differ from what is served (a mirror caught between two syncs)."""

    def __init__(self, root: Path, signer: Signer | None, suite: str = SUITE, by_hash: bool = True):
        self.root, self.signer, self.suite, self.by_hash = root, signer, suite, by_hash
        self.listed: dict[str, bytes] = {}
        self.pool: dict[str, tuple[str, bytes, str | None]] = {}  # package -> (filename, deb, listed sha)

    def dist(self, relpath: str, served: bytes, listed: bytes | None = None, *, by_hash_copy: bool = True) -> None:
        listed = served if listed is None else listed
        self.listed[relpath] = listed
        path = self.root / "dists" / self.suite / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(served)
        if by_hash_copy:
            bh = path.parent / "by-hash" / "SHA256" / sha(listed)
            bh.parent.mkdir(parents=True, exist_ok=True)
            bh.write_bytes(listed)

    def deb(self, package: str, files: dict[str, bytes | str], *, compression: str = "xz", served: bytes | None = None,
            version: str = "1.0-1") -> bytes:
        deb = make_deb(package, version, files, compression)
        filename = f"pool/main/{package[:4] if package.startswith('lib') else package[0]}/{package}/{package}_{version}_amd64.deb"
        (self.root / filename).parent.mkdir(parents=True, exist_ok=True)
        (self.root / filename).write_bytes(served if served is not None else deb)
        self.pool[package] = (filename, deb, None)
        return deb

    def publish(self, *, contents: tuple[bytes, bytes] | None = None) -> None:
        """Write Packages.xz (and Contents: (served, listed)) and the signed InRelease."""
        text = "".join(stanza(p, deb, fn) for p, (fn, deb, _) in sorted(self.pool.items()))
        self.dist("main/binary-amd64/Packages.xz", lzma.compress(text.encode()))
        if contents:
            served, listed = contents
            self.dist("main/Contents-amd64.gz", served, listed, by_hash_copy=served == listed)
        lines = [(f"Origin: Debian\nLabel: Debian\nSuite: stable\nCodename: {self.suite}\n"
                 f"Date: Sat, 21 Nov 2026 09:15:44 UTC\n")]
        if self.by_hash:
            lines.append("Acquire-By-Hash: yes\n")
        lines.append("SHA256:\n")
        lines += [f" {sha(b)} {len(b)} {rel}\n" for rel, b in sorted(self.listed.items())]
        text = "".join(lines)
        release = self.signer.clearsign(text) if self.signer else text.encode()
        (self.root / "dists" / self.suite / "InRelease").write_bytes(release)


class Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                log.append(self.path)
                super().do_GET()

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"
        self.closed = False

    def close(self):
        if not self.closed:
            self.closed = True
            self.srv.shutdown()
            self.srv.server_close()

    def got(self, part: str) -> list[str]:
        return [r for r in self.requests if part in r]


@pytest.fixture
def archive(tmp_path, signer):
    return Archive(tmp_path / "mirror", signer)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "mirror")
    yield s
    s.close()


@pytest.fixture
def warnings(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(debarchive, "warn", seen.append)  # the console binds stderr at import
    monkeypatch.setattr(closure, "warn", seen.append)
    return seen


LIBGOMP = {"usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0": b"\x7fELF gomp", "usr/lib/x86_64-linux-gnu/libgomp.so.1": "->libgomp.so.1.0.0",
           "usr/share/doc/libgomp1/copyright": b"GPL"}
CONTENTS = (b"usr/lib/x86_64-linux-gnu/libgomp.so.1   libs/libgomp1\n"
            b"usr/lib/x86_64-linux-gnu/libz.so.1      libs/zlib1g\n"
            b"usr/lib/x86_64-linux-gnu/libbar.so.1    libs/libbar1\n")
GOOD_CONTENTS = gzip.compress(CONTENTS, mtime=0)
OTHER_CONTENTS = gzip.compress(CONTENTS + b"usr/lib/x86_64-linux-gnu/libnew.so.1 libs/libnew1\n", mtime=0)


def scan_needing(*sonames: str) -> ElfScan:
    return ElfScan(objects=[ElfObject(origin="fw-1.0-cp313-cp313-manylinux_2_28_x86_64.whl", path="fw/_C.so",
                                      type="ET_DYN", machine="EM_X86_64", elfclass=64, soname=None,
                                      needed=tuple(sonames), rpath=(), runpath=())])


def closure_of(server, signer, cache, *sonames, **kw):
    kw.setdefault("strict", False)
    return compute_closure([], {"libc.so.6"}, SUITE, "amd64", server.url, [], scan=scan_needing(*sonames),
                           cache_dir=cache, keyring=str(signer.keyring), **kw)


# --- naming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("soname,first", [
    ("libgomp.so.1", "libgomp1"),
    ("libfoo-bar.so.1", "libfoo-bar1"),
    ("libpng16.so.16", "libpng16-16"),
    ("libgcc_s.so.1", "libgcc-s1"),
    ("libstdc++.so.6", "libstdc++6"),
    ("libX11.so.6", "libx11-6"),
    ("libfoo.so.1.2", "libfoo1.2"),
])
def test_policy_package_names(soname, first):
    names = debarchive.policy_package_names(soname)
    assert names[0] == first and names[1] == first + "t64"


def test_policy_package_names_need_a_soname_version():
    assert debarchive.policy_package_names("libfoo.so") == []
    assert debarchive.policy_package_names("libssl.so.3")[:2] == ["libssl3", "libssl3t64"]


# --- InRelease and index files ---------------------------------------------------------------------


def test_by_hash_is_fetched_first_and_cached_by_sha256(archive, server, tmp_path):
    archive.deb("libgomp1", LIBGOMP)
    archive.publish()
    # the file at its path is of another sync: only the by-hash copy is the one InRelease lists
    (tmp_path / "mirror/dists/trixie/main/binary-amd64/Packages.xz").write_bytes(lzma.compress(b"Package: stale\n"))
    rel = debarchive.fetch_release(SUITE, server.url, keyring=str(archive.signer.keyring), cache_dir=tmp_path / "c")
    assert rel.verified and rel.by_hash and rel.date == "Sat, 21 Nov 2026 09:15:44 UTC"
    got = debarchive.fetch_index(rel, "main/binary-amd64/Packages.xz", cache_dir=tmp_path / "c")
    assert got.sha256 == sha(archive.listed["main/binary-amd64/Packages.xz"])
    assert got.path == tmp_path / "c/debian/by-hash/SHA256" / got.sha256
    assert server.got("/by-hash/SHA256/") == [f"/dists/trixie/main/binary-amd64/by-hash/SHA256/{got.sha256}"]
    assert not server.got("binary-amd64/Packages.xz")  # the path was never needed
    n = len(server.requests)
    assert debarchive.fetch_index(rel, "main/binary-amd64/Packages.xz", cache_dir=tmp_path / "c").path == got.path
    assert len(server.requests) == n  # second call: from the cache, no download


def test_missing_by_hash_falls_back_to_the_path(archive, server, tmp_path):
    archive.deb("libgomp1", LIBGOMP)
    archive.publish()
    shutil.rmtree(tmp_path / "mirror/dists/trixie/main/binary-amd64/by-hash")
    rel = debarchive.fetch_release(SUITE, server.url, keyring=str(archive.signer.keyring), cache_dir=tmp_path / "c")
    got = debarchive.fetch_index(rel, "main/binary-amd64/Packages.xz", cache_dir=tmp_path / "c")
    assert got.sha256 == sha(archive.listed["main/binary-amd64/Packages.xz"])
    assert server.requests[1:] == [f"/dists/trixie/main/binary-amd64/by-hash/SHA256/{got.sha256}",
                                   "/dists/trixie/main/binary-amd64/Packages.xz"]


def test_without_acquire_by_hash_only_the_path_is_fetched(tmp_path, signer, server):
    archive = Archive(tmp_path / "mirror", signer, by_hash=False)
    archive.deb("libgomp1", LIBGOMP)
    archive.publish()
    rel = debarchive.fetch_release(SUITE, server.url, keyring=str(signer.keyring), cache_dir=tmp_path / "c")
    debarchive.fetch_index(rel, "main/binary-amd64/Packages.xz", cache_dir=tmp_path / "c")
    assert not server.got("by-hash") and server.got("/dists/trixie/main/binary-amd64/Packages.xz")


def test_mismatch_is_one_line_naming_suite_file_and_both_hashes(archive, server, tmp_path, warnings):
    archive.publish(contents=(OTHER_CONTENTS, GOOD_CONTENTS))  # served != listed, no by-hash copy
    rel = debarchive.fetch_release(SUITE, server.url, keyring=str(archive.signer.keyring), cache_dir=tmp_path / "c")
    with pytest.raises(debarchive.IndexMismatch) as info:
        debarchive.fetch_index(rel, "main/Contents-amd64.gz", cache_dir=tmp_path / "c")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("Debian trixie main/Contents-amd64.gz from http://127.0.0.1:")
    assert f"lists sha256 {sha(GOOD_CONTENTS)[:12]}..." in msg and f"serves {sha(OTHER_CONTENTS)[:12]}..." in msg
    assert "does not match InRelease (Sat, 21 Nov 2026 09:15:44 UTC)" in msg and "consistent one" in msg
    assert (info.value.expected, info.value.served) == (sha(GOOD_CONTENTS), sha(OTHER_CONTENTS))
    assert server.got("/dists/trixie/main/by-hash/SHA256/")  # by hash first, then the path
    assert server.got("/dists/stable/InRelease")  # the alias was asked (it is not there)
    assert sorted(p.name for p in (tmp_path / "c/debian/by-hash/SHA256").iterdir()) == []  # nothing unverified kept


def test_a_bad_signature_is_refused(archive, server, tmp_path):
    archive.publish()
    path = tmp_path / "mirror/dists/trixie/InRelease"
    path.write_bytes(path.read_bytes().replace(b"Label: Debian", b"Label: Evil!!"))
    with pytest.raises(ImagegenError, match="bad signature on http://127.0.0.1:.*/dists/trixie/InRelease"):
        debarchive.fetch_release(SUITE, server.url, keyring=str(archive.signer.keyring), cache_dir=tmp_path / "c")


def test_the_keyring_comes_from_the_environment(archive, server, tmp_path, monkeypatch):
    archive.publish()
    monkeypatch.setenv(settings.DEBIAN_KEYRING.name, str(archive.signer.keyring))
    assert debarchive.fetch_release(SUITE, server.url, cache_dir=tmp_path / "c").verified


def test_an_inrelease_of_another_suite_is_refused(archive, server, tmp_path):
    archive.publish()
    shutil.copytree(tmp_path / "mirror/dists/trixie", tmp_path / "mirror/dists/sid")
    with pytest.raises(ImagegenError, match="is the InRelease of stable/trixie, not of sid"):
        debarchive.fetch_release("sid", server.url, keyring=str(archive.signer.keyring), cache_dir=tmp_path / "c")


def test_only_the_signed_text_counts():
    signed = (b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nCodename: trixie\nSHA256:\n abc 1 main/x\n"
              b"- -dash escaped\n-----BEGIN PGP SIGNATURE-----\n\nxx\n-----END PGP SIGNATURE-----\n"
              b"SHA256:\n evil 1 main/y\n")
    assert debarchive.release_sha256(signed, "main/x") == ("abc", 1)
    assert debarchive.release_sha256(signed, "main/y") is None
    assert debarchive.release_field(signed, "Hash") is None
    assert "-dash escaped" in debarchive.signed_text(signed)


def test_offline_the_last_verified_inrelease_is_used(archive, server, tmp_path, warnings):
    archive.publish()
    kw = {"keyring": str(archive.signer.keyring), "cache_dir": tmp_path / "c"}
    debarchive.fetch_release(SUITE, server.url, **kw)
    server.close()
    rel = debarchive.fetch_release(SUITE, server.url, **kw)
    assert rel.stale and rel.verified
    (w,) = warnings
    assert w.startswith("using the cached InRelease of trixie (Sat, 21 Nov 2026 09:15:44 UTC): GET ")


# --- .deb members ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "gz", "zst"])
def test_deb_members_of_every_data_compression(compression):
    deb = make_deb("libgomp1", "1", LIBGOMP, compression)
    names = debarchive.deb_members(io.BytesIO(deb), "x.deb")
    assert "./usr/lib/x86_64-linux-gnu/libgomp.so.1" in names and "./usr/share/doc/libgomp1/copyright" in names


def test_an_unreadable_deb_is_one_line_error():
    with pytest.raises(ImagegenError, match=r"^x\.deb: not a readable \.deb"):
        debarchive.deb_members(io.BytesIO(b"!<arch>\nnot really"), "x.deb")


def test_loader_rank():
    assert debarchive.loader_rank("./usr/lib/x86_64-linux-gnu/libgomp.so.1", "amd64") == 0
    assert debarchive.loader_rank("lib/libold.so.2", "amd64") == 1
    assert debarchive.loader_rank("./usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "amd64") is None
    assert debarchive.loader_rank("./usr/lib/x86_64-linux-gnu/libgomp.so.1-gdb.py", "amd64") is None


# --- resolution -------------------------------------------------------------------------------------


def test_libgomp_resolves_by_name_and_deb_without_contents(archive, server, tmp_path, warnings):
    deb = archive.deb("libgomp1", LIBGOMP)
    archive.publish(contents=(OTHER_CONTENTS, GOOD_CONTENTS))  # a broken Contents: must not be needed
    c = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", strict=True)
    assert c.packages == ["libgomp1"]
    filename = archive.pool["libgomp1"][0]
    assert c.via["libgomp.so.1"] == {"method": "packages+deb", "version": "1.0-1", "deb": filename,
                                     "deb_sha256": sha(deb), "path": "/usr/lib/x86_64-linux-gnu/libgomp.so.1"}
    assert c.source == {"suite": "trixie", "mirror": server.url, "inrelease_date": "Sat, 21 Nov 2026 09:15:44 UTC",
                        "inrelease_verified": True, "index": "main/binary-amd64/Packages.xz",
                        "index_sha256": sha(archive.listed["main/binary-amd64/Packages.xz"])}
    assert not server.got("Contents") and not any("/main/by-hash/" in r for r in server.requests)
    assert server.got(filename) == [f"/{filename}"]
    assert warnings == []
    data = json.loads(c.to_json())
    assert data["resolved"]["libgomp.so.1"]["via"]["method"] == "packages+deb" and data["source"] == c.source
    # again: the .deb's facts and the Packages index are cached; only the InRelease is fetched
    n = len(server.requests)
    again = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", strict=True)
    assert server.requests[n:] == ["/dists/trixie/InRelease"]
    assert again.to_json() == c.to_json()


def test_a_candidate_whose_deb_lacks_the_soname_is_rejected(archive, server, tmp_path):
    archive.deb("libbar1", {"usr/lib/x86_64-linux-gnu/bar/libbar.so.1": b"\x7fELF", "usr/share/doc/libbar1/copyright": b"x"})
    archive.publish()
    c = closure_of(server, archive.signer, tmp_path / "c", "libbar.so.1", resolver="packages")
    assert c.packages == [] and list(c.unresolved) == ["libbar.so.1"]
    assert c.hints["libbar.so.1"] == "libbar1 ships no libbar.so.1 in the loader's directories"
    assert server.got(archive.pool["libbar1"][0])  # it was looked at, and refused


def test_a_deb_that_is_not_the_one_packages_lists_is_rejected(archive, server, tmp_path, warnings):
    archive.deb("libgomp1", LIBGOMP, served=make_deb("libgomp1", "1.0-1", {"usr/lib/x86_64-linux-gnu/libgomp.so.1": b"evil"}))
    archive.publish()
    c = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", resolver="packages")
    assert c.packages == [] and "libgomp1 (its .deb does not match main/binary-amd64/Packages.xz)" in c.hints["libgomp.so.1"]
    (w,) = warnings
    assert "does not match the Packages index" in w and "\n" not in w
    assert not (tmp_path / "c/debian/debs").exists()  # no fact recorded from a .deb that was not verified


def test_a_non_policy_name_falls_back_to_contents(archive, server, tmp_path):
    archive.deb("libgomp1", LIBGOMP)
    archive.publish(contents=(GOOD_CONTENTS, GOOD_CONTENTS))
    c = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", "libz.so.1", strict=True)
    assert c.packages == ["libgomp1", "zlib1g"]
    assert c.via["libz.so.1"] == {"method": "contents", "index": "main/Contents-amd64.gz", "index_sha256": sha(GOOD_CONTENTS)}
    assert c.via["libgomp.so.1"]["method"] == "packages+deb"
    assert server.got("/dists/trixie/main/by-hash/SHA256/" + sha(GOOD_CONTENTS))


def test_when_contents_disagrees_the_soname_is_unresolved_with_the_fix(archive, server, tmp_path):
    archive.deb("libgomp1", LIBGOMP)
    archive.publish(contents=(OTHER_CONTENTS, GOOD_CONTENTS))
    c = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", "libz.so.1")
    assert c.packages == ["libgomp1"] and list(c.unresolved) == ["libz.so.1"]
    hint = c.hints["libz.so.1"]
    assert "\n" not in hint
    assert hint.startswith("no package named libz1 or libz1t64 or libz1v5 in main/binary-amd64/Packages.xz; ")
    assert (f"Debian trixie's Contents index main/Contents-amd64.gz disagrees with its signed InRelease (served "
            f"{sha(OTHER_CONTENTS)[:12]}..., listed {sha(GOOD_CONTENTS)[:12]}...)") in hint
    assert "use a consistent mirror" in hint and "commit the closure" in hint
    with pytest.raises(ImagegenError) as info:
        closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", "libz.so.1", strict=True)
    assert str(info.value).startswith("libz.so.1, needed by fw/_C.so") and "disagrees with its signed InRelease" in str(info.value)


def test_the_contents_resolver_alone_still_works(archive, server, tmp_path):
    archive.deb("libgomp1", LIBGOMP)
    archive.publish(contents=(GOOD_CONTENTS, GOOD_CONTENTS))
    c = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", resolver="contents", strict=True)
    assert c.packages == ["libgomp1"] and c.via["libgomp.so.1"]["method"] == "contents"
    assert c.source["index"] == "main/Contents-amd64.gz" and not server.got("Packages")


def test_an_unknown_resolver_is_a_user_error():
    with pytest.raises(ImagegenError, match="unknown closure resolver 'apt'"):
        closure.map_packages(["libgomp.so.1"], SUITE, resolver="apt")


def test_resolution_offline_uses_what_is_cached(archive, server, tmp_path, warnings):
    archive.deb("libgomp1", LIBGOMP)
    archive.publish()
    first = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", strict=True)
    server.close()
    again = closure_of(server, archive.signer, tmp_path / "c", "libgomp.so.1", strict=True)
    assert again.to_json() == first.to_json()
    assert len(warnings) == 1 and warnings[0].startswith("using the cached InRelease of trixie")
