"""Debian archive files fetched and verified the way apt does, and sonames resolved by package name.

The one place that reads a Debian archive over HTTP (``closure`` uses it for the Contents index too).

Fetching (apt's rules, https://wiki.debian.org/DebianRepository/Format):

1. ``dists/<suite>/InRelease`` is fetched and its signature checked with ``gpgv`` against the
   Debian archive keyring (``$IMAGEGEN_DEBIAN_KEYRING``, else
   ``/usr/share/keyrings/debian-archive-keyring.gpg``; without gpgv or the keyring: a warning).
   Only the signed text is read, and its ``Suite`` or ``Codename`` must name the suite asked for.
2. A file it lists is fetched **by hash first** when it says ``Acquire-By-Hash: yes``
   (``<dir>/by-hash/SHA256/<sha256>`` next to the file, as apt does since 1.2: a mirror between two
   syncs still serves the exact file its InRelease names), else, or when that fails, by its path.
3. Its size and SHA256 must be the ones InRelease lists. If not, and the suite's alias
   (``Suite: stable`` of codename trixie) has a signed InRelease that lists exactly the served file,
   that file is used with a warning (the mirror serves another, signed, state of the archive).
   Otherwise :class:`IndexMismatch`: one line naming the suite, the file and both hashes. An index
   is never used unverified.

Verified files are cached under ``$IMAGEGEN_CACHE/debian/by-hash/SHA256/<sha256>``, so a second call
downloads nothing but the InRelease (and not even that when it is offline: the last verified
InRelease is used, with a warning).

Resolving without a Contents index (:func:`resolve_by_name`): Debian policy §8.1
(https://www.debian.org/doc/debian-policy/ch-sharedlibs.html#run-time-shared-libraries) names the
package of a run-time library after its soname: ``libgomp.so.1`` -> ``libgomp1``,
``libpng16.so.16`` -> ``libpng16-16``; package names are lowercase and ``_`` is ``-`` there
(``libgcc_s.so.1`` -> ``libgcc-s1``); trixie's 64-bit time_t transition appended ``t64``
(https://wiki.debian.org/ReleaseGoals/64bit-time). The candidates the suite's ``Packages`` index
lists are then **confirmed** from their own file lists: the ``.deb`` is downloaded (its SHA256
checked against ``Packages``, as apt does) and accepted only if it ships the soname in the loader's
default directories. What a ``.deb`` ships is cached by its SHA256 (``debian/debs/``), so a
repeated resolution downloads nothing. Sonames that do not follow the rule (``libz.so.1`` is in
``zlib1g``) are left to the Contents index (``closure.compute_closure``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from . import paths, settings
from .console import log, warn
from .errors import ImagegenError, UserInputError
from .redact import redact_url

DEFAULT_MIRROR = "http://deb.debian.org/debian"
POLICY_URL = "https://www.debian.org/doc/debian-policy/ch-sharedlibs.html#run-time-shared-libraries"

#: a library file name: libfoo.so, libfoo.so.1, libfoo.so.1.2.3
LIBNAME = re.compile(r"\.so(\.[0-9]+)*$")


# --- architectures and the loader's directories ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DebArch:
    triplet: str  # multiarch triplet: the loader's default library directories
    machine: str  # ELF e_machine (pyelftools name)
    elfclass: int


#: Debian architecture -> what its native ELF objects look like.
DEB_ARCHES: dict[str, DebArch] = {
    "amd64": DebArch("x86_64-linux-gnu", "EM_X86_64", 64),
    "arm64": DebArch("aarch64-linux-gnu", "EM_AARCH64", 64),
    "ppc64el": DebArch("powerpc64le-linux-gnu", "EM_PPC64", 64),
    "s390x": DebArch("s390x-linux-gnu", "EM_S390", 64),
}


def deb_arch(arch: str) -> DebArch:
    """The facts of a Debian architecture; UserInputError for one imagegen does not know."""
    try:
        return DEB_ARCHES[arch]
    except KeyError:
        raise UserInputError(
            f"unsupported Debian architecture {arch!r}", hint=f"one of {', '.join(sorted(DEB_ARCHES))}"
        ) from None


def loader_dirs(arch: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """Directories (archive paths: no leading slash) the loader searches by default, with a
    preference rank (0 = the multiarch directory), and the prefixes that are never native."""
    t = deb_arch(arch).triplet
    ranks = {f"usr/lib/{t}": 0, f"lib/{t}": 0, "usr/lib": 1, "lib": 1, "usr/lib64": 1, "lib64": 1}
    foreign = ("lib32/", "libx32/", "usr/lib32/", "usr/libx32/", "lib/debug/", "usr/lib/debug/")
    return ranks, foreign


def loader_rank(path: str, arch: str) -> int | None:
    """The rank of a library file (archive path, ``./`` allowed) in the loader's default
    directories (:func:`loader_dirs`), or None when it is not a library file there."""
    path = path[2:] if path.startswith("./") else path.lstrip("/")
    d, _, name = path.rpartition("/")
    if not LIBNAME.search(name):
        return None
    return loader_dirs(arch)[0].get(d)


# --- HTTP ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Transfers:
    """What this process fetched from archives (bench and tests read it)."""

    requests: int = 0
    bytes: int = 0
    urls: list[str] = dataclasses.field(default_factory=list)


transfers = Transfers()


class FetchError(ImagegenError):
    """A GET failed. ``status``: the HTTP status, None when the server could not be reached."""

    def __init__(self, message: str, *, status: int | None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class IndexUnavailable(ImagegenError):
    """An index file cannot be used verified: not listed, not served, or not what InRelease lists."""


class IndexMismatch(IndexUnavailable):
    """The served file is not the one InRelease (or Packages, for a .deb) lists."""

    def __init__(self, message: str, *, suite: str, relpath: str, expected: str, served: str, hint: str):
        super().__init__(message, hint=hint)
        self.suite, self.relpath, self.expected, self.served = suite, relpath, expected, served


def ca_bundle() -> str | bool:
    """The CA bundle requests should use: the host's (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, PIP_CERT, the
    system bundle), else True (certifi)."""
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "PIP_CERT"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return os.environ[var]
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(path).is_file():
            return path
    return True


def _get(url: str, sink: IO[bytes] | None, timeout: float, limit: int | None) -> tuple[bytes, str, int]:
    """GET into ``sink`` (or memory): (body if in memory, sha256, bytes). Stops after ``limit`` bytes."""
    import requests

    shown = redact_url(url)
    transfers.requests += 1
    transfers.urls.append(shown)
    h, size, body = hashlib.sha256(), 0, bytearray()
    try:
        with requests.get(url, stream=True, timeout=timeout, verify=ca_bundle()) as resp:
            if resp.status_code != 200:
                raise FetchError(f"GET {shown}: HTTP {resp.status_code}", status=resp.status_code)
            for chunk in resp.iter_content(1 << 20):
                h.update(chunk)
                size += len(chunk)
                transfers.bytes += len(chunk)
                if sink is None:
                    body += chunk
                else:
                    sink.write(chunk)
                if limit is not None and size > limit:
                    break
    except requests.Timeout:
        raise FetchError(f"GET {shown}: timed out after {timeout:.0f}s", status=None) from None
    except requests.ConnectionError as exc:
        root = exc.args[0] if exc.args else exc
        reason = getattr(root, "reason", root)
        raise FetchError(f"GET {shown}: cannot connect ({type(reason).__name__})", status=None) from None
    except requests.RequestException as exc:
        raise FetchError(f"GET {shown}: {str(exc).splitlines()[0][:160]}", status=None) from None
    return bytes(body), h.hexdigest(), size


def http_get(url: str, timeout: float = 60.0) -> bytes:
    """The body of ``url`` (requests, the host's CA bundle). FetchError on any failure (one line,
    credentials redacted)."""
    return _get(url, None, timeout, None)[0]


def mirror_slug(mirror: str) -> str:
    """The mirror URL as a directory name (``deb.debian.org_debian``)."""
    slug = re.sub(r"^[a-z]+://", "", mirror.rstrip("/"))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", slug)


def suite_dir(mirror: str, suite: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``$IMAGEGEN_CACHE/debian/<mirror>/<suite>`` (not created)."""
    return paths.debian_dir(Path(cache_dir) if cache_dir else None) / mirror_slug(mirror) / suite


def sha256_file(path: Path) -> str:
    """Hex SHA256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- InRelease -----------------------------------------------------------------------------------


def signed_text(inrelease: bytes) -> str:
    """The text an InRelease signs (dash-escaping undone); the whole text of an unsigned Release."""
    text = inrelease.decode("utf-8", "replace")
    lines = text.splitlines()
    if not lines or lines[0] != "-----BEGIN PGP SIGNED MESSAGE-----":
        return text
    try:
        start = lines.index("") + 1  # after the armor headers (Hash: ...)
        end = lines.index("-----BEGIN PGP SIGNATURE-----")
    except ValueError:
        return ""
    return "\n".join(line.removeprefix("- ") for line in lines[start:end]) + "\n"


def release_sha256(inrelease: bytes, relpath: str) -> tuple[str, int] | None:
    """(sha256, size in bytes) the Release lists for ``relpath`` (e.g. ``main/Contents-amd64.gz``)."""
    in_sha = False
    for line in signed_text(inrelease).splitlines():
        if not line.startswith(" "):
            in_sha = line.strip() == "SHA256:"
            continue
        if in_sha:
            parts = line.split()
            if len(parts) == 3 and parts[2] == relpath:
                return parts[0], int(parts[1])
    return None


def release_field(inrelease: bytes, name: str) -> str | None:
    """A single-line field of a Release (``Date``, ``Codename``, ``Suite``, ``Acquire-By-Hash``)."""
    for line in signed_text(inrelease).splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def verify_inrelease(data: bytes, where: str, keyring: str | None = None) -> bool:
    """Check an InRelease's signature with gpgv. Returns True when checked and good; False (with a
    warning) when gpgv or the keyring is missing; ImagegenError on a bad signature. ``keyring``:
    a keyring file, else ``$IMAGEGEN_DEBIAN_KEYRING``, else the debian-archive-keyring package's."""
    keyring = keyring or settings.DEBIAN_KEYRING.value()
    gpgv = shutil.which("gpgv")
    if not gpgv or not Path(keyring).is_file():
        warn(f"not verifying the signature of {where}: needs gpgv and {keyring} (package debian-archive-keyring)")
        return False
    with tempfile.NamedTemporaryFile(suffix=".InRelease") as fh:
        fh.write(data)
        fh.flush()
        res = subprocess.run([gpgv, "--keyring", keyring, fh.name], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ImagegenError(f"bad signature on {where}", hint=(res.stderr.strip().splitlines() or ["gpgv failed"])[-1])
    return True


@dataclasses.dataclass(frozen=True)
class Release:
    """A suite's InRelease, signature checked (``verified`` False: no gpgv or keyring, warned)."""

    suite: str
    mirror: str
    url: str
    data: bytes
    verified: bool
    keyring: str | None = None
    stale: bool = False  # the cached copy, used because the mirror could not be reached

    @property
    def base(self) -> str:
        return f"{self.mirror.rstrip('/')}/dists/{self.suite}"

    def field(self, name: str) -> str | None:
        return release_field(self.data, name)

    @property
    def date(self) -> str | None:
        return self.field("Date")

    @property
    def by_hash(self) -> bool:
        return (self.field("Acquire-By-Hash") or "").lower() == "yes"

    def entry(self, relpath: str) -> tuple[str, int] | None:
        """(sha256, size) listed for ``relpath``, or None."""
        return release_sha256(self.data, relpath)

    def source(self) -> dict:
        """Deterministic provenance for a result derived from this release."""
        return {"suite": self.suite, "mirror": redact_url(self.mirror), "inrelease_date": self.date,
                "inrelease_verified": self.verified}


def fetch_release(
    suite: str,
    mirror: str = DEFAULT_MIRROR,
    *,
    keyring: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_age: float = 0.0,
    timeout: float = 30.0,
) -> Release:
    """``dists/<suite>/InRelease`` of ``mirror``, signature verified (:func:`verify_inrelease`).

    ``max_age`` (seconds): a cached InRelease younger than that is used without network (0: always
    fetch, like ``apt update``). When the mirror cannot be reached, the last verified InRelease is
    used with a warning (``Release.stale``). Raises FetchError (no network and no cached copy;
    HTTP errors), ImagegenError (bad signature; an InRelease of another suite)."""
    cache = suite_dir(mirror, suite, cache_dir) / "InRelease"
    url = f"{mirror.rstrip('/')}/dists/{suite}/InRelease"
    shown = redact_url(url)
    if max_age > 0 and cache.is_file() and time.time() - cache.stat().st_mtime < max_age:
        data = cache.read_bytes()
        return Release(suite, mirror, url, data, verify_inrelease(data, shown, keyring), keyring)
    try:
        data = http_get(url, timeout=timeout)
    except FetchError as exc:
        if exc.status is not None or not cache.is_file():
            raise
        data = cache.read_bytes()
        warn(f"using the cached InRelease of {suite} ({release_field(data, 'Date')}): {exc}")
        return Release(suite, mirror, url, data, verify_inrelease(data, shown, keyring), keyring, stale=True)
    verified = verify_inrelease(data, shown, keyring)
    names = {release_field(data, "Suite"), release_field(data, "Codename")}
    if suite not in names:
        raise ImagegenError(f"{shown} is the InRelease of {'/'.join(sorted(n for n in names if n)) or 'no suite'}, "
                            f"not of {suite}", hint="check the base's suite and mirror")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"InRelease.part{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(cache)
    return Release(suite, mirror, url, data, verified, keyring)


# --- index files ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IndexFile:
    """A verified index file in the cache."""

    relpath: str  # as InRelease names it: main/binary-amd64/Packages.xz
    sha256: str
    size: int
    path: Path  # $IMAGEGEN_CACHE/debian/by-hash/SHA256/<sha256>
    listed_by: str  # the InRelease URL that lists this sha256


def _fetch_to(url: str, part: Path, timeout: float, limit: int) -> tuple[str, int]:
    """GET into the file ``part`` (removed on failure): (sha256, bytes)."""
    try:
        with part.open("wb") as fh:
            _, sha, size = _get(url, fh, timeout, limit)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return sha, size


def fetch_index(
    release: Release,
    relpath: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 120.0,
) -> IndexFile:
    """A file ``release`` lists (``relpath``: ``main/Contents-amd64.gz``,
    ``main/binary-amd64/Packages.xz``), fetched by hash first and verified (size, SHA256), from the
    cache when it holds that SHA256. Raises IndexUnavailable (not listed, not served), IndexMismatch
    (served, but not what InRelease lists, and no signed alias lists it: one line with the suite, the
    file and both hashes), FetchError (mirror unreachable)."""
    entry = release.entry(relpath)
    if entry is None:
        raise IndexUnavailable(f"{redact_url(release.url)} lists no {relpath}",
                               hint="check the suite, component and architecture, or use a complete mirror")
    sha, size = entry
    store_dir = paths.debian_by_hash(Path(cache_dir) if cache_dir else None)
    store = store_dir / sha
    if store.is_file() and store.stat().st_size == size and sha256_file(store) == sha:
        return IndexFile(relpath, sha, size, store, redact_url(release.url))
    store_dir.mkdir(parents=True, exist_ok=True)
    directory, _, _ = relpath.rpartition("/")
    urls = [f"{release.base}/{directory + '/' if directory else ''}by-hash/SHA256/{sha}"] if release.by_hash else []
    urls.append(f"{release.base}/{relpath}")
    served: tuple[str, int, Path] | None = None
    failed: FetchError | None = None
    log(f"downloading {redact_url(release.base)}/{relpath} ({size / 1e6:.1f} MB)")
    for url in urls:
        part = store_dir / f"{sha}.part{os.getpid()}"
        try:
            got, got_size = _fetch_to(url, part, timeout, size + (64 << 20))
        except FetchError as exc:
            failed = exc
            continue  # apt: a by-hash failure falls back to the file's path
        if got == sha and got_size == size:
            part.replace(store)
            return IndexFile(relpath, sha, size, store, redact_url(release.url))
        if served:
            served[2].unlink(missing_ok=True)
        kept = store_dir / f"{got}.unverified{os.getpid()}"
        part.replace(kept)
        served = (got, got_size, kept)
    if served is None:
        assert failed is not None
        if failed.status is None:
            raise failed
        raise IndexUnavailable(f"Debian {release.suite}: {relpath} is listed by its InRelease but not served ({failed})",
                               hint="the mirror is incomplete: use a complete mirror")
    got, got_size, kept = served
    try:
        listed_by = _listed_by_alias(release, relpath, got)
        if listed_by:
            kept.replace(store_dir / got)
            return IndexFile(relpath, got, got_size, store_dir / got, listed_by)
    finally:
        kept.unlink(missing_ok=True)
    tried = "by hash and by path" if release.by_hash else "by path (no Acquire-By-Hash)"
    raise IndexMismatch(
        f"Debian {release.suite} {relpath} from {redact_url(release.mirror)} does not match InRelease "
        f"({release.date}): it lists sha256 {sha[:12]}... ({size} bytes), the mirror serves {got[:12]}... "
        f"({got_size} bytes), fetched {tried}",
        suite=release.suite, relpath=relpath, expected=sha, served=got,
        hint="the mirror is mid-sync or inconsistent: retry later or point the base's mirror at a consistent one",
    )


def _listed_by_alias(release: Release, relpath: str, got: str) -> str | None:
    """The URL of the signed InRelease of the suite's alias (``Suite: stable`` for codename trixie)
    when it lists exactly the served file (a mirror caught between two syncs), else None."""
    codename, alias = release.field("Codename"), release.field("Suite")
    if not alias or alias == release.suite or not codename:
        return None
    other_url = f"{release.mirror.rstrip('/')}/dists/{alias}/InRelease"
    try:
        other = http_get(other_url, timeout=30)
    except FetchError:
        return None
    if release_field(other, "Codename") != codename:
        return None
    verify_inrelease(other, redact_url(other_url), release.keyring)
    listed = release_sha256(other, relpath)
    if not listed or listed[0] != got:
        return None
    warn(f"{redact_url(release.base)}/{relpath} is from another sync of the mirror than its InRelease; its SHA256 is "
         f"the one the signed {redact_url(other_url)} ({release_field(other, 'Date')}) lists: using it")
    return redact_url(other_url)


def open_index(path: Path) -> IO[bytes]:
    """A verified index file, decompressed (xz, gzip or plain, by its magic)."""
    with path.open("rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.open(path, "rb")
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    return path.open("rb")


# --- the Packages index --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DebPackage:
    """One binary package of a Packages index."""

    name: str
    version: str
    filename: str  # pool path relative to the mirror: pool/main/g/gcc-12/libgomp1_12.2.0-14_amd64.deb
    sha256: str
    size: int  # bytes


@dataclasses.dataclass
class PackagesIndex:
    suite: str
    arch: str
    component: str
    relpath: str  # main/binary-amd64/Packages.xz
    sha256: str  # of that file
    packages: dict[str, DebPackage]  # name -> the newest version the index lists


PACKAGES_FORMAT = 1
_FIELDS = ["Package", "Version", "Filename", "SHA256", "Size"]


def packages_relpath(release: Release, arch: str, component: str = "main") -> str:
    """The Packages file to fetch: ``.xz`` when listed (apt's preference), else ``.gz``, else plain.
    IndexUnavailable when the InRelease lists none."""
    for ext in (".xz", ".gz", ""):
        rel = f"{component}/binary-{arch}/Packages{ext}"
        if release.entry(rel):
            return rel
    raise IndexUnavailable(f"{redact_url(release.url)} lists no {component}/binary-{arch}/Packages",
                           hint="check the suite, component and architecture")


def parse_packages(stream: IO[bytes]) -> dict[str, DebPackage]:
    """name -> DebPackage from a Packages file (python-debian's deb822 parser); of two stanzas for
    one name the higher Version wins (dpkg's ordering)."""
    from debian import deb822
    from debian.debian_support import Version

    out: dict[str, DebPackage] = {}
    for p in deb822.Packages.iter_paragraphs(stream, use_apt_pkg=False, fields=_FIELDS):
        try:
            pkg = DebPackage(p["Package"], p["Version"], p["Filename"], p["SHA256"].lower(), int(p["Size"]))
        except (KeyError, ValueError):
            continue
        old = out.get(pkg.name)
        if old is None or Version(pkg.version) > Version(old.version):
            out[pkg.name] = pkg
    return out


def packages_index(
    release: Release,
    arch: str = "amd64",
    *,
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
) -> PackagesIndex:
    """The suite's ``<component>/binary-<arch>/Packages`` (verified by :func:`fetch_index`), parsed
    once and cached compactly by the file's SHA256. Raises what fetch_index raises."""
    deb_arch(arch)
    relpath = packages_relpath(release, arch, component)
    f = fetch_index(release, relpath, cache_dir=cache_dir)
    root = Path(cache_dir) if cache_dir else None
    derived = paths.debian_packages(root) / f"{f.sha256}-v{PACKAGES_FORMAT}.json.gz"
    try:
        with gzip.open(derived, "rt", encoding="utf-8") as fh:
            rows = json.load(fh)
        packages = {r[0]: DebPackage(*r) for r in rows}
    except (OSError, ValueError, TypeError, EOFError):
        t0 = time.monotonic()
        with open_index(f.path) as fh:
            packages = parse_packages(fh)
        derived.parent.mkdir(parents=True, exist_ok=True)
        tmp = derived.with_name(derived.name + f".part{os.getpid()}")
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            json.dump([dataclasses.astuple(p) for _, p in sorted(packages.items())], fh, separators=(",", ":"))
        tmp.replace(derived)
        log(f"indexed {relpath} of {release.suite}: {len(packages)} packages ({time.monotonic() - t0:.1f}s)")
    return PackagesIndex(release.suite, arch, component, relpath, f.sha256, packages)


# --- .deb contents -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DebLibraries:
    """The library files a .deb ships in the loader's default directories (fact cached by sha256)."""

    package: str
    version: str
    filename: str
    sha256: str
    libs: dict[str, str]  # file name -> its path in the package (best loader rank first)


def deb_members(fileobj: IO[bytes], where: str) -> list[str]:
    """Paths in a .deb's data archive (``./usr/lib/...``), read with python-debian's DebFile.

    data.tar.gz/.xz/.bz2 go through DebFile; data.tar.zst is inflated with the ``zstandard``
    module (DebFile needs the ``unzstd`` program for it). ImagegenError on an unreadable .deb."""
    import zstandard
    from debian.arfile import ArError
    from debian.debfile import DebError, DebFile

    try:
        deb = DebFile(fileobj=fileobj)
        data = next(n for n in deb.getnames() if n.startswith("data.tar"))
        if data.endswith(".zst"):
            reader = zstandard.ZstdDecompressor().stream_reader(deb.getmember(data))
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                return [m.name for m in tf]
        return list(deb.data.tgz().getnames())
    except (DebError, ArError, tarfile.TarError, OSError, EOFError, StopIteration, lzma.LZMAError,
            zstandard.ZstdError) as exc:
        raise ImagegenError(f"{where}: not a readable .deb ({type(exc).__name__}: {str(exc)[:120]})") from None


def deb_libraries(
    pkg: DebPackage,
    mirror: str,
    arch: str = "amd64",
    *,
    cache_dir: str | os.PathLike | None = None,
    suite: str = "",
    timeout: float = 120.0,
) -> DebLibraries:
    """The library files ``pkg`` ships in the loader's default directories (:func:`loader_dirs`).

    From the cache by the .deb's SHA256; else the .deb (``mirror``/``pkg.filename``) is downloaded to
    a temporary file, checked against the Packages index's size and SHA256 (as apt does), and listed.
    Raises IndexMismatch (the .deb is not the one Packages lists), FetchError, ImagegenError
    (unreadable .deb)."""
    facts_path = paths.debian_debs(Path(cache_dir) if cache_dir else None) / f"{pkg.sha256}.json"
    try:
        data = json.loads(facts_path.read_text())
        if data["package"] == pkg.name and data["version"] == pkg.version:
            return DebLibraries(**data)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    url = f"{mirror.rstrip('/')}/{pkg.filename}"
    with tempfile.TemporaryFile() as fh:
        _, got, size = _get(url, fh, timeout, pkg.size + (1 << 20))
        if got != pkg.sha256 or size != pkg.size:
            raise IndexMismatch(
                f"Debian {suite} {pkg.filename} from {redact_url(mirror)} does not match the Packages index: it lists "
                f"sha256 {pkg.sha256[:12]}... ({pkg.size} bytes), the mirror serves {got[:12]}... ({size} bytes)",
                suite=suite, relpath=pkg.filename, expected=pkg.sha256, served=got,
                hint="the mirror is mid-sync or inconsistent: retry later or point the base's mirror at a consistent one")
        fh.seek(0)
        members = deb_members(fh, pkg.filename)
    found: dict[str, tuple[int, str]] = {}
    for m in members:
        rank = loader_rank(m, arch)
        if rank is None:
            continue
        path = m[2:] if m.startswith("./") else m.lstrip("/")
        name = path.rsplit("/", 1)[-1]
        if name not in found or (rank, path) < found[name]:
            found[name] = (rank, path)
    facts = DebLibraries(pkg.name, pkg.version, pkg.filename, pkg.sha256,
                         {n: p for n, (_, p) in sorted(found.items())})
    facts_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = facts_path.with_name(facts_path.name + f".part{os.getpid()}")
    tmp.write_text(json.dumps(dataclasses.asdict(facts), indent=1, sort_keys=True))
    tmp.replace(facts_path)
    return facts


# --- resolution by package name ------------------------------------------------------------------

_SONAME = re.compile(r"(?P<name>[^/]+?)\.so\.(?P<version>[0-9][0-9.]*)")
_PKG_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
#: suffixes of ABI transitions appended to policy names: trixie's 64-bit time_t, GCC 5's C++11 ABI
TRANSITION_SUFFIXES = ("", "t64", "v5")


def policy_package_names(soname: str) -> list[str]:
    """Debian policy §8.1's package names for a soname, most likely first (:data:`POLICY_URL`):
    ``<name><version>``, with a hyphen when the name ends in a digit, lowercase, ``_`` -> ``-``, then
    the same with the transition suffixes (``t64``, ``v5``). ``[]`` for a name without a version
    (``libfoo.so``)."""
    m = _SONAME.fullmatch(soname)
    if not m:
        return []
    name, version = m["name"].lower().replace("_", "-"), m["version"]
    base = f"{name}{'-' if name[-1].isdigit() else ''}{version}"
    return [base + s for s in TRANSITION_SUFFIXES if _PKG_NAME.fullmatch(base + s)]


@dataclasses.dataclass(frozen=True)
class Resolution:
    soname: str
    package: str
    via: dict  # provenance: {"method": "packages+deb", "deb": pool path, "deb_sha256", "version", "path"}


def resolve_by_name(
    sonames: Iterable[str],
    release: Release,
    packages: PackagesIndex,
    arch: str = "amd64",
    *,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, Resolution], dict[str, str]]:
    """soname -> the package policy's naming rule (:func:`policy_package_names`) and the package's own
    file list (:func:`deb_libraries`) agree on, for the sonames that have one; plus, for the others,
    a one-line note of what was tried. Among several confirmed packages: the multiarch directory
    first, then by name. Network only for .debs whose facts are not cached. Raises what
    deb_libraries raises (a .deb that is not what Packages lists is never read)."""
    resolved: dict[str, Resolution] = {}
    notes: dict[str, str] = {}
    ranks = loader_dirs(arch)[0]
    for soname in sorted(set(sonames)):
        names = policy_package_names(soname)
        listed = [n for n in names if n in packages.packages]
        if not listed:
            notes[soname] = (f"no package named {' or '.join(names)} in {packages.relpath}" if names
                             else "its name has no soname version for Debian's library package naming")
            continue
        confirmed, rejected = [], []
        for name in listed:
            try:
                facts = deb_libraries(packages.packages[name], release.mirror, arch, cache_dir=cache_dir,
                                      suite=release.suite)
            except IndexMismatch as exc:  # never read a .deb that is not the one Packages lists
                warn(str(exc))
                rejected.append(f"{name} (its .deb does not match {packages.relpath})")
                continue
            except FetchError as exc:
                if exc.status is None:
                    raise
                rejected.append(f"{name} (.deb not served: HTTP {exc.status})")
                continue
            path = facts.libs.get(soname)
            if path:
                confirmed.append((ranks[path.rpartition("/")[0]], name, path, facts))
            else:
                rejected.append(f"{name} ships no {soname} in the loader's directories")
        if not confirmed:
            notes[soname] = "; ".join(rejected)
            continue
        _, name, path, facts = min(confirmed, key=lambda c: c[:2])
        resolved[soname] = Resolution(soname, name, {
            "method": "packages+deb", "version": facts.version, "deb": facts.filename,
            "deb_sha256": facts.sha256, "path": "/" + path,
        })
    return resolved, notes
