"""ELF closure of a Python environment against a runtime base.

Reads the dynamic section (SONAME, NEEDED, RPATH, RUNPATH) of every ELF object shipped in the
wheels (straight from the zip members, never extracted) or in an installed tree, works out which
NEEDED sonames neither the environment, the runtime base, the host (NVIDIA driver libraries) nor
glibc provide, and maps each of them to the Debian package that ships it, using the suite's
Contents index. The result is the list of packages ``imagegen/scripts/sysroot.py`` adds to the
runtime. Nothing here is a hand-written list of libraries: only glibc's own sonames, which every
glibc base has by definition.

Reading ELF from a zip member: a deflated member can only be read forward. The dynamic section of
a large library sits far into the file (``libphi.so`` of Paddle 2.6 GPU is 1.9 GB), and the
string table it points to sits near the start. :class:`_MemberStream` gives pyelftools' struct
parsers a seekable view over the member that inflates forward in 1 MiB chunks, keeps the first
chunk (headers) and the last one, and restarts only when a read goes backwards. The reads are
ordered (headers, dynamic tags, then strings by offset) so a member costs at most one inflation up
to its dynamic section plus one up to its string table, in constant memory.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.common.utils import parse_cstring_from_stream, struct_parse
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from . import paths
from .console import log, warn
from .errors import ImagegenError, UserInputError

ELF_MAGIC = b"\x7fELF"

#: glibc's own sonames (package libc6): present in any glibc base by definition.
GLIBC_SONAMES = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
        "libresolv.so.2",
        "libanl.so.1",
        "libnsl.so.1",
        "libBrokenLocale.so.1",
        "libc_malloc_debug.so.0",
        "libmvec.so.1",
        "libthread_db.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "ld64.so.2",
        "ld64.so.1",
    }
)


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
    try:
        return DEB_ARCHES[arch]
    except KeyError:
        raise UserInputError(
            f"unsupported Debian architecture {arch!r}", hint=f"one of {', '.join(sorted(DEB_ARCHES))}"
        ) from None


# --- scanning -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ElfObject:
    """The dynamic-linking facts of one ELF file of the environment."""

    origin: str  # wheel file name, or the scanned tree's path
    path: str  # member name in the wheel / path relative to the tree
    type: str  # ET_DYN | ET_EXEC
    machine: str  # EM_X86_64, ...
    elfclass: int
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def where(self) -> str:
        return f"{self.path} ({self.origin})"


@dataclasses.dataclass
class ElfScan:
    """Every ELF object found, plus the files that looked like ELF but were not used, and why."""

    objects: list[ElfObject] = dataclasses.field(default_factory=list)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # symlink basename -> its target's path
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (origin, path, reason)
    members: int = 0  # files looked at
    inflated_bytes: int = 0  # bytes inflated while reading zip members (cost measure)
    seconds: float = 0.0

    def extend(self, other: ElfScan) -> None:
        self.objects += other.objects
        self.aliases.update(other.aliases)
        self.skipped += other.skipped
        self.members += other.members
        self.inflated_bytes += other.inflated_bytes
        self.seconds += other.seconds

    def native(self, arch: str = "amd64") -> list[ElfObject]:
        """The objects the loader of `arch` would load (foreign ones, e.g. CUDA cubins, excluded)."""
        a = deb_arch(arch)
        return [o for o in self.objects if o.machine == a.machine and o.elfclass == a.elfclass]

    def provided(self, arch: str = "amd64") -> dict[str, list[str]]:
        """soname or file name -> the environment files that provide it."""
        out: dict[str, list[str]] = {}
        for o in self.native(arch):
            for name in {o.basename, o.soname} - {None}:
                out.setdefault(name, []).append(o.where)
        for alias, target in self.aliases.items():
            out.setdefault(alias, []).append(target)
        return {k: sorted(set(v)) for k, v in out.items()}

    def needed(self, arch: str = "amd64") -> dict[str, list[str]]:
        """NEEDED soname -> the environment files that need it."""
        out: dict[str, list[str]] = {}
        for o in self.native(arch):
            for name in o.needed:
                out.setdefault(name, []).append(o.where)
        return {k: sorted(set(v)) for k, v in sorted(out.items())}


class _MemberStream:
    """A seekable, read-only view of a zip member that inflates forward only.

    Seeks are free; a read behind what has been inflated restarts the member (counted in
    ``restarts``), except inside the first chunk (kept: ELF headers) or the last one read."""

    CHUNK = 1 << 20

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        self._zf, self._info = zf, info
        self.size = info.file_size
        self._raw = None
        self._raw_pos = 0
        self._head = b""
        self._buf, self._buf_start = b"", 0
        self._pos = 0
        self.inflated = 0
        self.restarts = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        out = bytearray()
        while n > 0:
            piece = self._cached(self._pos, n)
            if piece is None:
                self._fill(self._pos)
                continue
            out += piece
            self._pos += len(piece)
            n -= len(piece)
        return bytes(out)

    def _cached(self, pos: int, n: int) -> bytes | None:
        for start, data in ((0, self._head), (self._buf_start, self._buf)):
            if start <= pos < start + len(data):
                return data[pos - start : pos - start + n]
        return None

    def _fill(self, pos: int) -> None:
        if self._raw is None or pos < self._raw_pos:
            if self._raw is not None:
                self._raw.close()
                self.restarts += 1
            self._raw = self._zf.open(self._info)
            self._raw_pos = 0
        while True:
            data = self._raw.read(self.CHUNK)
            if not data:
                raise EOFError(f"{self._info.filename}: unexpected end of member")
            start = self._raw_pos
            self._raw_pos += len(data)
            self.inflated += len(data)
            if start == 0:
                self._head = data
            if pos < self._raw_pos:
                self._buf, self._buf_start = data, start
                return

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _read_elf(stream, origin: str, path: str) -> ElfObject | str:
    """Parse the dynamic section of one ELF file. Returns the object or the reason to skip it."""
    try:
        elf = ELFFile(stream)
        etype, machine, elfclass = elf["e_type"], elf["e_machine"], elf.elfclass
        if etype not in ("ET_DYN", "ET_EXEC"):
            return f"not loadable ({etype})"
        phdrs = [
            struct_parse(elf.structs.Elf_Phdr, stream, stream_pos=elf["e_phoff"] + i * elf["e_phentsize"])
            for i in range(elf["e_phnum"])
        ]
        loads = [p for p in phdrs if p["p_type"] == "PT_LOAD"]
        dyn = next((p for p in phdrs if p["p_type"] == "PT_DYNAMIC"), None)
        tags: list[tuple[str, int]] = []
        if dyn is not None and dyn["p_filesz"]:
            size = elf.structs.Elf_Dyn.sizeof()
            stream.seek(dyn["p_offset"])
            raw = stream.read(dyn["p_filesz"])  # one forward read; small (a few hundred bytes)
            for i in range(len(raw) // size):
                t = elf.structs.Elf_Dyn.parse(raw[i * size : (i + 1) * size])
                if t["d_tag"] == "DT_NULL":
                    break
                tags.append((t["d_tag"], t["d_val"]))
        strtab = next((v for k, v in tags if k == "DT_STRTAB"), None)
        wanted = [(k, v) for k, v in tags if k in ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH")]
        strings: dict[int, str] = {}
        if wanted:
            if strtab is None:
                return "dynamic section without DT_STRTAB"
            base = next(
                (strtab - p["p_vaddr"] + p["p_offset"] for p in loads if p["p_vaddr"] <= strtab < p["p_vaddr"] + p["p_filesz"]),
                None,
            )
            if base is None:
                return "DT_STRTAB outside every PT_LOAD segment"
            for off in sorted({v for _, v in wanted}):  # ascending: one forward pass over the table
                s = parse_cstring_from_stream(stream, base + off)
                if s is None:
                    return "unterminated string in the dynamic string table"
                strings[off] = s.decode("utf-8", "replace")

        def values(tag: str) -> list[str]:
            return [strings[v] for k, v in wanted if k == tag]

        def paths(tag: str) -> tuple[str, ...]:
            return tuple(p for s in values(tag) for p in s.split(":") if p)

        sonames = values("DT_SONAME")
        return ElfObject(
            origin=origin,
            path=path,
            type=etype,
            machine=str(machine),
            elfclass=elfclass,
            soname=sonames[0] if sonames else None,
            needed=tuple(values("DT_NEEDED")),
            rpath=paths("DT_RPATH"),
            runpath=paths("DT_RUNPATH"),
        )
    except (ELFError, ConstructError, EOFError, KeyError, ValueError) as exc:
        return f"malformed ELF: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def needed_from_wheels(wheel_paths: Iterable[str | os.PathLike]) -> ElfScan:
    """Scan every ELF object inside the given wheels, reading the zip members in place."""
    scan = ElfScan()
    for wheel in sorted(Path(p) for p in wheel_paths):
        scan.extend(_scan_wheel(wheel))
    return scan


def _scan_wheel(wheel: Path) -> ElfScan:
    scan = ElfScan()
    t0 = time.monotonic()
    try:
        zf = zipfile.ZipFile(wheel)
    except FileNotFoundError:
        raise UserInputError(f"wheel not found: {wheel}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserInputError(f"{wheel.name}: not a readable wheel: {exc}") from None
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or info.file_size < 52:  # smaller than an ELF header
                continue
            scan.members += 1
            stream = _MemberStream(zf, info)
            try:
                if stream.read(4) != ELF_MAGIC:
                    continue
                stream.seek(0)
                found = _read_elf(stream, wheel.name, info.filename)
            except (zipfile.BadZipFile, zlib.error, OSError) as exc:
                raise UserInputError(f"{wheel.name}: corrupt member {info.filename}: {exc}") from None
            finally:
                scan.inflated_bytes += stream.inflated
                stream.close()
            if isinstance(found, str):
                scan.skipped.append((wheel.name, info.filename, found))
            else:
                scan.objects.append(found)
    scan.seconds = time.monotonic() - t0
    return scan


def needed_from_tree(root_dir: str | os.PathLike) -> ElfScan:
    """Scan every ELF object under an installed tree (a venv, a site-packages, a rootfs).

    Symlinks are not followed into directories; a symlink to an ELF file of the tree makes its
    own name a provided name (``libfoo.so.1 -> libfoo.so.1.2``)."""
    root = Path(root_dir)
    if not root.is_dir():
        raise UserInputError(f"not a directory: {root}")
    scan = ElfScan()
    t0 = time.monotonic()
    origin = str(root)
    links: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                links.append(p)
                continue
            if not p.is_file():
                continue
            scan.members += 1
            try:
                with p.open("rb") as fh:
                    if fh.read(4) != ELF_MAGIC:
                        continue
                    fh.seek(0)
                    found = _read_elf(fh, origin, rel)
            except OSError as exc:
                scan.skipped.append((origin, rel, f"unreadable: {exc.strerror or exc}"))
                continue
            if isinstance(found, str):
                scan.skipped.append((origin, rel, found))
            else:
                scan.objects.append(found)
    by_path = {o.path: o for o in scan.objects}
    for link in links:
        try:
            target = link.resolve(strict=True).relative_to(root.resolve()).as_posix()
        except (OSError, ValueError):
            continue  # dangling, a loop or outside the tree
        if target in by_path:
            scan.aliases[link.name] = by_path[target].where
    scan.seconds = time.monotonic() - t0
    return scan


# --- Debian Contents index ------------------------------------------------------------------------

INDEX_FORMAT = 1
_DEV_LIKE = re.compile(r"-(dev|dbg|dbgsym|doc)$")
_LIBNAME = re.compile(r"\.so(\.[0-9]+)*$")  # libfoo.so, libfoo.so.1, libfoo.so.1.2.3


def _ca_bundle() -> str | bool:
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "PIP_CERT"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return os.environ[var]
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(path).is_file():
            return path
    return True


def _loader_dirs(arch: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """Directories (as in Contents, no leading slash) the loader searches by default, with a
    preference rank (0 = the multiarch directory), and the ones that are never native."""
    t = deb_arch(arch).triplet
    ranks = {f"usr/lib/{t}": 0, f"lib/{t}": 0, "usr/lib": 1, "lib": 1, "usr/lib64": 1, "lib64": 1}
    foreign = ("lib32/", "libx32/", "usr/lib32/", "usr/libx32/", "lib/debug/", "usr/lib/debug/")
    return ranks, foreign


def parse_contents(lines: Iterable[str], arch: str) -> dict:
    """Compact index of a Contents file: shared-library file names -> packages.

    ``libs``: name -> [[package, rank], ...] best first, for files in the loader's default
    directories; ``elsewhere``: name -> [[path, package], ...] for library files in other library
    directories (not loadable by name without extra configuration; used for hints only)."""
    ranks, foreign = _loader_dirs(arch)
    libs: dict[str, set[tuple[str, int]]] = {}
    elsewhere: dict[str, set[tuple[str, str]]] = {}
    for line in lines:
        if ".so" not in line or not (line.startswith("lib") or line.startswith("usr/lib")):
            continue
        path, _, pkgs = line.rstrip("\n").rpartition(" ")
        path = path.rstrip()
        if not path or path.startswith(foreign) or "/debug/" in path:
            continue
        d, _, name = path.rpartition("/")
        if not _LIBNAME.search(name):
            continue
        top = d.split("/", 2)
        if not (top[0] in ("lib", "lib64") or (top[0] == "usr" and len(top) > 1 and top[1] in ("lib", "lib64"))):
            continue
        names = [q.rsplit("/", 1)[-1] for q in pkgs.split(",") if q]
        if d in ranks:
            for pkg in names:
                libs.setdefault(name, set()).add((pkg, ranks[d]))
        else:
            for pkg in names:
                elsewhere.setdefault(name, set()).add((path, pkg))

    def order(entry: tuple[str, int]) -> tuple:
        pkg, rank = entry
        return (rank, bool(_DEV_LIKE.search(pkg)), pkg)

    out_libs: dict[str, list[list]] = {}
    for name, entries in libs.items():
        best: dict[str, int] = {}
        for pkg, rank in entries:
            best[pkg] = min(rank, best.get(pkg, rank))
        out_libs[name] = [[p, r] for p, r in sorted(best.items(), key=order)]
    return {
        "libs": dict(sorted(out_libs.items())),
        "elsewhere": {k: [list(e) for e in sorted(v)] for k, v in sorted(elsewhere.items())},
    }


@dataclasses.dataclass
class ContentsIndex:
    suite: str
    arch: str
    mirror: str
    component: str
    sha256: str  # of the Contents-<arch>.gz it was derived from
    libs: dict[str, list[list]]
    elsewhere: dict[str, list[list]]

    def lookup(self, soname: str) -> str | None:
        """The package to install for a soname: loader-path file, multiarch dir first, then a
        runtime (non -dev/-dbg) package, then by name. None if no package ships it there."""
        entries = self.libs.get(soname)
        return entries[0][0] if entries else None

    def candidates(self, soname: str) -> list[str]:
        return [e[0] for e in self.libs.get(soname, [])]

    def sonames_of(self, packages: Iterable[str]) -> set[str]:
        """The library names the given packages ship in the loader's default directories (e.g. a
        base's soname set from the package names of its dpkg status, without running it)."""
        wanted = {p.split(":", 1)[0] for p in packages}
        return {name for name, entries in self.libs.items() if any(e[0] in wanted for e in entries)}

    def hint(self, soname: str) -> str | None:
        found = self.elsewhere.get(soname)
        if not found:
            return None
        shown = ", ".join(f"/{p} ({pkg})" for p, pkg in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        return f"only found outside the loader's default directories: {shown}{more}"


def _mirror_slug(mirror: str) -> str:
    slug = re.sub(r"^[a-z]+://", "", mirror.rstrip("/"))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", slug)


def _http_get(url: str, dest: Path | None = None, timeout: float = 60.0) -> bytes | None:
    import requests

    try:
        with requests.get(url, stream=True, timeout=timeout, verify=_ca_bundle()) as resp:
            if resp.status_code != 200:
                raise ImagegenError(f"GET {url}: HTTP {resp.status_code}")
            if dest is None:
                return resp.content
            tmp = dest.with_name(dest.name + f".part{os.getpid()}")
            with tmp.open("wb") as fh:
                for chunk in resp.iter_content(1 << 20):
                    fh.write(chunk)
            tmp.replace(dest)
            return None
    except requests.Timeout:
        raise ImagegenError(f"GET {url}: timed out after {timeout:.0f}s") from None
    except requests.ConnectionError as exc:
        root = exc.args[0] if exc.args else exc
        reason = getattr(root, "reason", root)
        raise ImagegenError(f"GET {url}: cannot connect ({type(reason).__name__})") from None
    except requests.RequestException as exc:
        raise ImagegenError(f"GET {url}: {str(exc).splitlines()[0][:160]}") from None


def _release_sha256(inrelease: bytes, relpath: str) -> tuple[str, int] | None:
    in_sha = False
    for line in inrelease.decode("utf-8", "replace").splitlines():
        if not line.startswith(" "):
            in_sha = line.strip() == "SHA256:"
            continue
        if in_sha:
            parts = line.split()
            if len(parts) == 3 and parts[2] == relpath:
                return parts[0], int(parts[1])
    return None


DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _verify_inrelease(data: bytes, where: str, keyring: str | None) -> None:
    keyring = keyring or os.environ.get("IMAGEGEN_DEBIAN_KEYRING") or DEFAULT_KEYRING
    gpgv = shutil.which("gpgv")
    if not gpgv or not Path(keyring).is_file():
        warn(f"not verifying the signature of {where}: needs gpgv and {keyring} (package debian-archive-keyring)")
        return
    with tempfile.NamedTemporaryFile(suffix=".InRelease") as fh:
        fh.write(data)
        fh.flush()
        res = subprocess.run([gpgv, "--keyring", keyring, fh.name], capture_output=True, text=True)
    if res.returncode != 0:
        raise ImagegenError(f"bad signature on {where}", hint=(res.stderr.strip().splitlines() or ["gpgv failed"])[-1])


def contents_index(
    suite: str,
    arch: str = "amd64",
    mirror: str = "http://deb.debian.org/debian",
    *,
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
    max_age: float = 7 * 86400,
    refresh: bool = False,
    keyring: str | None = None,
) -> ContentsIndex:
    """The compact library index of a suite's Contents file, downloaded on the host and cached.

    A cached index younger than ``max_age`` seconds is used without network. Otherwise the
    suite's InRelease is fetched (and its signature checked with gpgv when the Debian archive
    keyring is present); the Contents file is downloaded only if its SHA256 changed, and checked
    against InRelease. If the archive cannot be reached, a stale cached index is used with a
    warning."""
    deb_arch(arch)
    root = Path(cache_dir) if cache_dir else paths.cache_root()
    d = root / "debian" / _mirror_slug(mirror) / suite / component
    index_path = d / f"index-{arch}.json.gz"
    relpath = f"{component}/Contents-{arch}.gz"
    raw_path = d / f"Contents-{arch}.gz"
    cached = _load_index(index_path)
    if cached and not refresh and time.time() - index_path.stat().st_mtime < max_age:
        return cached
    d.mkdir(parents=True, exist_ok=True)
    base = f"{mirror.rstrip('/')}/dists/{suite}"
    t0 = time.monotonic()
    try:
        inrelease = _http_get(f"{base}/InRelease", timeout=30)
        assert inrelease is not None
    except ImagegenError as exc:
        if cached:
            warn(f"using the cached Contents index of {suite}/{component} ({exc})")
            return cached
        raise
    _verify_inrelease(inrelease, f"{base}/InRelease", keyring)
    expected = _release_sha256(inrelease, relpath)
    if expected is None:
        raise ImagegenError(f"{base}/InRelease lists no {relpath}", hint="check the suite, component and architecture")
    sha, size = expected
    if cached and cached.sha256 == sha:
        index_path.touch()
        return cached
    if not (raw_path.is_file() and _sha256(raw_path) == sha):
        log(f"downloading {base}/{relpath} ({size / 1e6:.1f} MB)")
        _http_get(f"{base}/{relpath}", dest=raw_path, timeout=120)
        got = _sha256(raw_path)
        if got != sha:
            raw_path.unlink(missing_ok=True)
            raise ImagegenError(f"{base}/{relpath}: SHA256 {got[:12]}... does not match InRelease ({sha[:12]}...)")
    t1 = time.monotonic()
    with gzip.open(raw_path, "rt", encoding="utf-8", errors="replace") as fh:
        parsed = parse_contents(fh, arch)
    index = ContentsIndex(suite=suite, arch=arch, mirror=mirror, component=component, sha256=sha, **parsed)
    _save_index(index_path, index)
    log(f"indexed {relpath} of {suite}: {len(index.libs)} library names (fetch {t1 - t0:.1f}s, parse {time.monotonic() - t1:.1f}s)")
    return index


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_index(path: Path) -> ContentsIndex | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        if data.pop("format", None) != INDEX_FORMAT:
            return None
        return ContentsIndex(**data)
    except (OSError, ValueError, TypeError, EOFError):
        return None


def _save_index(path: Path, index: ContentsIndex) -> None:
    tmp = path.with_name(path.name + f".part{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        json.dump({"format": INDEX_FORMAT, **dataclasses.asdict(index)}, fh, separators=(",", ":"))
    tmp.replace(path)


def soname_to_package(
    sonames: Iterable[str],
    suite: str,
    arch: str = "amd64",
    mirror: str = "http://deb.debian.org/debian",
    *,
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """soname -> the Debian package that ships it in the loader's default directories.

    Sonames no package ships there are left out of the result (see compute_closure for the
    error naming them)."""
    index = contents_index(suite, arch, mirror, component=component, cache_dir=cache_dir)
    out = {}
    for name in sorted(set(sonames)):
        pkg = index.lookup(name)
        if pkg:
            out[name] = pkg
    return out


# --- closure ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Closure:
    """What the runtime base lacks for the environment, as Debian packages."""

    packages: list[str]  # sorted, unique: what sysroot.py installs (it adds their Depends)
    resolved: dict[str, tuple[str, list[str]]]  # soname -> (package, [needed by ...])
    unresolved: dict[str, list[str]]  # soname -> [needed by ...]
    satisfied: dict[str, str]  # soname -> environment | base | host | glibc | ignored
    suite: str
    arch: str
    objects: int  # native ELF objects scanned
    hints: dict[str, str] = dataclasses.field(default_factory=dict)  # soname -> why unresolved

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "arch": self.arch,
            "objects": self.objects,
            "packages": self.packages,
            "resolved": {k: {"package": p, "needed_by": n} for k, (p, n) in sorted(self.resolved.items())},
            "unresolved": dict(sorted(self.unresolved.items())),
            "satisfied": dict(sorted(self.satisfied.items())),
            "hints": dict(sorted(self.hints.items())),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def packages_txt(self) -> str:
        """The package list file sysroot.py reads (closure.txt)."""
        return "".join(f"{p}\n" for p in self.packages)

    def error(self) -> ImagegenError | None:
        if not self.unresolved:
            return None
        soname, needers = next(iter(sorted(self.unresolved.items())))
        more = len(self.unresolved) - 1
        also = f"; {more} more unresolved: {', '.join(sorted(self.unresolved)[1:4])}" if more else ""
        return ImagegenError(
            f"{soname}, needed by {needers[0]}, is provided by neither the environment, the runtime base, "
            f"the host nor any package of Debian {self.suite} ({self.arch}){also}",
            hint=self.hints.get(soname) or "add it to the closure's ignore list if it is never loaded",
        )


def resolve(
    scan: ElfScan,
    base_sonames: Iterable[str],
    host_provided: Iterable[str] = (),
    *,
    arch: str = "amd64",
    ignore: Iterable[str] = (),
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Split the environment's NEEDED sonames into satisfied (soname -> by what) and missing
    (soname -> needed by)."""
    provided = scan.provided(arch)
    base, host, ignored = set(base_sonames), set(host_provided), set(ignore)
    satisfied: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for name, needers in scan.needed(arch).items():
        if name in provided:
            satisfied[name] = "environment"
        elif name in GLIBC_SONAMES:
            satisfied[name] = "glibc"
        elif name in base:
            satisfied[name] = "base"
        elif name in host:
            satisfied[name] = "host"
        elif name in ignored:
            satisfied[name] = "ignored"
        else:
            missing[name] = needers
    return satisfied, missing


def compute_closure(
    wheels: Iterable[str | os.PathLike],
    base_sonames: Iterable[str],
    suite: str,
    arch: str = "amd64",
    mirror: str = "http://deb.debian.org/debian",
    host_provided: Iterable[str] | None = None,
    *,
    ignore: Iterable[str] = (),
    strict: bool = True,
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
    scan: ElfScan | None = None,
) -> Closure:
    """The Debian packages the runtime base needs for the environment made of ``wheels``.

    ``wheels``: .whl files and/or installed trees (directories). ``base_sonames``: the sonames the
    runtime base has (imagegen.bases.role_sonames). ``host_provided``: defaults to the CUDA data's
    host_provided list. With ``strict`` (the default) an unresolvable soname raises ImagegenError
    naming the soname, the library that needs it and its wheel; otherwise it is reported in
    ``Closure.unresolved``."""
    deb_arch(arch)
    if host_provided is None:
        from . import compat

        host_provided = compat.cuda().host_provided
    if scan is None:
        scan = ElfScan()
        paths = [Path(p) for p in wheels]
        files = [p for p in paths if not p.is_dir()]
        scan.extend(needed_from_wheels(files))
        for tree in sorted(p for p in paths if p.is_dir()):
            scan.extend(needed_from_tree(tree))
    satisfied, missing = resolve(scan, base_sonames, host_provided, arch=arch, ignore=ignore)
    resolved: dict[str, tuple[str, list[str]]] = {}
    unresolved: dict[str, list[str]] = {}
    hints: dict[str, str] = {}
    if missing:
        index = contents_index(suite, arch, mirror, component=component, cache_dir=cache_dir)
        for name, needers in sorted(missing.items()):
            pkg = index.lookup(name)
            if pkg:
                resolved[name] = (pkg, needers)
            else:
                unresolved[name] = needers
                hint = index.hint(name)
                if hint:
                    hints[name] = hint
    closure = Closure(
        packages=sorted({p for p, _ in resolved.values()}),
        resolved=resolved,
        unresolved=unresolved,
        satisfied=satisfied,
        suite=suite,
        arch=arch,
        objects=len(scan.native(arch)),
        hints=hints,
    )
    if strict and (err := closure.error()):
        raise err
    return closure
