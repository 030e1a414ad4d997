"""ELF closure of a Python environment against a runtime base.

Reads the dynamic section (SONAME, NEEDED, RPATH, RUNPATH) of every ELF object shipped in the
wheels (straight from the zip members, never extracted) or in an installed tree, works out which
NEEDED sonames neither the environment, the runtime base, the host (NVIDIA driver libraries) nor
glibc provide, and maps each of them to the Debian package that ships it: by Debian's library
package naming from the suite's verified Packages index, each candidate confirmed from its own .deb
(:mod:`imagegen.debarchive`), then from the suite's Contents index for the sonames naming cannot
confirm. The result is the list of packages ``imagegen/scripts/sysroot.py`` adds to the runtime. Nothing here is a hand-written list of libraries: only glibc's own sonames, which every
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
import io
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from . import debarchive, elf
from .console import log, warn
from .debarchive import DEB_ARCHES, DebArch, deb_arch  # noqa: F401 (closure's API since before debarchive)
from .errors import ImagegenError, UserInputError
from .redact import redact_url

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
    """Parse the dynamic section of one ELF file (:func:`imagegen.elf.read_dynamic`). Returns the
    object or the reason to skip it."""
    d = elf.read_dynamic(stream)
    if isinstance(d, str):
        return d
    return ElfObject(origin=origin, path=path, type=d.type, machine=d.machine, elfclass=d.elfclass,
                     soname=d.soname, needed=d.needed, rpath=d.rpath, runpath=d.runpath)


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


def parse_contents(lines: Iterable[str], arch: str) -> dict:
    """Compact index of a Contents file: shared-library file names -> packages.

    ``libs``: name -> [[package, rank], ...] best first, for files in the loader's default
    directories; ``elsewhere``: name -> [[path, package], ...] for library files in other library
    directories (not loadable by name without extra configuration; used for hints only)."""
    ranks, foreign = debarchive.loader_dirs(arch)
    libs: dict[str, set[tuple[str, int]]] = {}
    elsewhere: dict[str, set[tuple[str, str]]] = {}
    for line in lines:
        if ".so" not in line or not line.startswith(("lib", "usr/lib")):
            continue
        path, _, pkgs = line.rstrip("\n").rpartition(" ")
        path = path.rstrip()
        if not path or path.startswith(foreign) or "/debug/" in path:
            continue
        d, _, name = path.rpartition("/")
        if not debarchive.LIBNAME.search(name):
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


def contents_index(
    suite: str,
    arch: str = "amd64",
    mirror: str = debarchive.DEFAULT_MIRROR,
    *,
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
    max_age: float = 7 * 86400,
    refresh: bool = False,
    keyring: str | None = None,
    release: debarchive.Release | None = None,
) -> ContentsIndex:
    """The compact library index of a suite's Contents file, downloaded on the host and cached.

    A cached index is used without network when it is younger than ``max_age`` seconds or is of the
    Contents file ``release`` lists. Otherwise the suite's InRelease is fetched (signature checked:
    :func:`imagegen.debarchive.fetch_release`) unless ``release`` is given, and the Contents file is
    fetched the way apt does and verified against it (:func:`imagegen.debarchive.fetch_index`: by
    hash first, cached by SHA256). If the archive cannot be reached, a stale cached index is used
    with a warning. Raises IndexUnavailable / IndexMismatch (a Contents file the InRelease does not
    vouch for), FetchError, ImagegenError."""
    deb_arch(arch)
    d = debarchive.suite_dir(mirror, suite, cache_dir) / component
    index_path = d / f"index-{arch}.json.gz"
    relpath = f"{component}/Contents-{arch}.gz"
    cached = _load_index(index_path)
    listed = release.entry(relpath) if release else None
    if cached and not refresh and (time.time() - index_path.stat().st_mtime < max_age
                                   or (listed and listed[0] == cached.sha256)):
        return cached
    t0 = time.monotonic()
    if release is None:
        try:
            release = debarchive.fetch_release(suite, mirror, keyring=keyring, cache_dir=cache_dir)
        except debarchive.FetchError as exc:
            if cached:
                warn(f"using the cached Contents index of {suite}/{component} ({exc})")
                return cached
            raise
        listed = release.entry(relpath)
    if cached and listed and cached.sha256 == listed[0]:
        index_path.touch()
        return cached
    raw = debarchive.fetch_index(release, relpath, cache_dir=cache_dir)
    t1 = time.monotonic()
    with gzip.open(raw.path, "rt", encoding="utf-8", errors="replace") as fh:
        parsed = parse_contents(fh, arch)
    index = ContentsIndex(suite=suite, arch=arch, mirror=mirror, component=component, sha256=raw.sha256, **parsed)
    d.mkdir(parents=True, exist_ok=True)
    _save_index(index_path, index)
    (d / f"Contents-{arch}.gz").unlink(missing_ok=True)  # where the raw file lived before debarchive
    log(f"indexed {relpath} of {suite}: {len(index.libs)} library names (fetch {t1 - t0:.1f}s, parse {time.monotonic() - t1:.1f}s)")
    return index


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
    mirror: str = debarchive.DEFAULT_MIRROR,
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
    #: where the package names came from: {"suite", "mirror", "inrelease_date", "inrelease_verified",
    #: "index": "main/binary-amd64/Packages.xz", "index_sha256"} ({} when nothing was looked up)
    source: dict = dataclasses.field(default_factory=dict)
    #: soname -> how its package was found: {"method": "packages+deb", "deb", "deb_sha256", "version",
    #: "path"} or {"method": "contents", "index", "index_sha256"}
    via: dict[str, dict] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """Deterministic (sorted; the only date is the InRelease's): fit for a committed file."""
        return {
            "suite": self.suite,
            "arch": self.arch,
            "objects": self.objects,
            "packages": self.packages,
            "resolved": {k: {"package": p, "needed_by": n, "via": dict(sorted(self.via.get(k, {}).items()))}
                         for k, (p, n) in sorted(self.resolved.items())},
            "unresolved": dict(sorted(self.unresolved.items())),
            "satisfied": dict(sorted(self.satisfied.items())),
            "hints": dict(sorted(self.hints.items())),
            "source": dict(sorted(self.source.items())),
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


RESOLVERS = ("auto", "packages", "contents")


@dataclasses.dataclass
class PackageMap:
    """Result of :func:`map_packages`."""

    found: dict[str, tuple[str, dict]]  # soname -> (package, via: see Closure.via)
    hints: dict[str, str]  # soname -> why it was not found (one line)
    source: dict  # see Closure.source


def _contents_hint(exc: ImagegenError, suite: str, note: str | None) -> str:
    if isinstance(exc, debarchive.IndexMismatch):
        why = (f"Debian {suite}'s Contents index {exc.relpath} disagrees with its signed InRelease (served "
               f"{exc.served[:12]}..., listed {exc.expected[:12]}...)")
    else:
        why = f"Debian {suite}'s Contents index cannot be used ({exc.message})"
    fix = ("use a consistent mirror (the base's mirror:), or commit the closure (locks/<cell>.closure.json) "
           "from a machine that reaches one")
    return f"{note + '; ' if note else ''}{why}: {fix}"


def map_packages(
    sonames: Iterable[str],
    suite: str,
    arch: str = "amd64",
    mirror: str = debarchive.DEFAULT_MIRROR,
    *,
    resolver: str = "auto",
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
    keyring: str | None = None,
) -> PackageMap:
    """soname -> the Debian package that ships it in the loader's default directories.

    ``resolver``: ``auto`` (default): the suite's verified Packages index and Debian's library
    package naming, each candidate confirmed from its own .deb (:func:`imagegen.debarchive.resolve_by_name`),
    then the Contents index for the sonames naming cannot confirm; ``packages``: the first only;
    ``contents``: the Contents index only (the resolver before debarchive). A Contents index that
    does not verify leaves its sonames out of ``found`` with a hint naming the mismatch and the fix.
    Raises FetchError (the mirror cannot be reached and nothing is cached), ImagegenError."""
    if resolver not in RESOLVERS:
        raise UserInputError(f"unknown closure resolver {resolver!r}", hint=f"one of {', '.join(RESOLVERS)}")
    deb_arch(arch)
    remaining = sorted(set(sonames))
    found: dict[str, tuple[str, dict]] = {}
    notes: dict[str, str] = {}
    source: dict = {}
    release = None
    offline = False
    if remaining and resolver in ("auto", "packages"):
        try:
            release = debarchive.fetch_release(suite, mirror, keyring=keyring, cache_dir=cache_dir)
            pkgs = debarchive.packages_index(release, arch, component=component, cache_dir=cache_dir)
            source = {**release.source(), "index": pkgs.relpath, "index_sha256": pkgs.sha256}
            by_name, notes = debarchive.resolve_by_name(remaining, release, pkgs, arch, cache_dir=cache_dir)
            found.update({k: (r.package, r.via) for k, r in by_name.items()})
        except (debarchive.FetchError, debarchive.IndexUnavailable) as exc:
            if resolver == "packages":
                raise
            offline = isinstance(exc, debarchive.FetchError) and exc.status is None
            warn(f"resolving by package name failed ({exc}); using the Contents index alone")
            notes = {} if offline else {k: f"not resolved by package name: {exc.message}" for k in remaining}
        remaining = [k for k in remaining if k not in found]
    hints: dict[str, str] = {}
    if remaining and resolver in ("auto", "contents"):
        try:
            index = contents_index(suite, arch, mirror, component=component, cache_dir=cache_dir, keyring=keyring,
                                   release=release, **({"max_age": float("inf")} if offline else {}))
        except debarchive.IndexUnavailable as exc:
            return PackageMap(found, {k: _contents_hint(exc, suite, notes.get(k)) for k in remaining}, source)
        relpath = f"{component}/Contents-{arch}.gz"
        if not source:
            base = release.source() if release else {"suite": suite, "mirror": redact_url(mirror),
                                                     "inrelease_date": None, "inrelease_verified": False}
            source = {**base, "index": relpath, "index_sha256": index.sha256}
        for name in remaining:
            pkg = index.lookup(name)
            if pkg:
                found[name] = (pkg, {"method": "contents", "index": relpath, "index_sha256": index.sha256})
            elif hint := index.hint(name) or notes.get(name):
                hints[name] = hint
    else:
        hints = {k: notes[k] for k in remaining if k in notes}
    return PackageMap(found, hints, source)


def compute_closure(
    wheels: Iterable[str | os.PathLike],
    base_sonames: Iterable[str],
    suite: str,
    arch: str = "amd64",
    mirror: str = debarchive.DEFAULT_MIRROR,
    host_provided: Iterable[str] | None = None,
    *,
    ignore: Iterable[str] = (),
    strict: bool = True,
    component: str = "main",
    cache_dir: str | os.PathLike | None = None,
    scan: ElfScan | None = None,
    resolver: str = "auto",
    keyring: str | None = None,
) -> Closure:
    """The Debian packages the runtime base needs for the environment made of ``wheels``.

    ``wheels``: .whl files and/or installed trees (directories). ``base_sonames``: the sonames the
    runtime base has (imagegen.bases.role_sonames). ``host_provided``: defaults to the CUDA data's
    host_provided list. With ``strict`` (the default) an unresolvable soname raises ImagegenError
    naming the soname, the library that needs it and its wheel; otherwise it is reported in
    ``Closure.unresolved``. ``resolver`` and ``keyring``: see :func:`map_packages` (by package name
    from the verified Packages index first, the Contents index for the rest); ``Closure.source`` and
    ``Closure.via`` record where each package came from."""
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
    mapped = PackageMap({}, {}, {})
    if missing:
        mapped = map_packages(missing, suite, arch, mirror, resolver=resolver, component=component,
                              cache_dir=cache_dir, keyring=keyring)
        for name, needers in sorted(missing.items()):
            if name in mapped.found:
                resolved[name] = (mapped.found[name][0], needers)
            else:
                unresolved[name] = needers
                if name in mapped.hints:
                    hints[name] = mapped.hints[name]
    closure = Closure(
        packages=sorted({p for p, _ in resolved.values()}),
        resolved=resolved,
        unresolved=unresolved,
        satisfied=satisfied,
        suite=suite,
        arch=arch,
        objects=len(scan.native(arch)),
        hints=hints,
        source=mapped.source,
        via={k: mapped.found[k][1] for k in resolved},
    )
    if strict and (err := closure.error()):
        raise err
    return closure
