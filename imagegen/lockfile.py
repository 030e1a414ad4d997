"""The lock-file model and format: what to lock (LockRequest), what was locked (Lock, LockedWheel),
the target a lock is for (platform tags, marker environment), and reading/writing lock files.

Plain values only: no pip, no network, no matrix. ``imagegen.lock`` resolves a LockRequest into a
Lock with the host's pip; ``imagegen.wheelhouse`` fetches and stages a Lock's wheels.

Lock file format (``write_lock``/``read_lock``): pip requirements format, ``name==version`` plus
``--hash=sha256:`` per wheel, so ``pip install --require-hashes -r`` reads it as is; a header of comments
(cell, target, extra indexes, requirements, how to regenerate, and one ``# meta:`` JSON line that
``read_lock`` parses); per wheel a comment with its file name, its source URL (credentials redacted) and
what needs it. Builder-only tools are a trailing block of ``#tool `` lines that pip ignores. Sorted, no
timestamps: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .errors import ImagegenError, UserInputError
from .redact import redact_url

LOCK_FORMAT = 1
ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x", "i686", "armv7l")


# --- request and lock models -------------------------------------------------------------------


@dataclass(frozen=True)
class Index:
    """An index (PEP 503 simple) or find-links page searched in addition to the host pip configuration."""

    name: str
    kind: Literal["index", "find-links"]
    url: str

    @classmethod
    def of(cls, value: "Index | tuple[str, str, str] | Sequence[str]") -> "Index":
        if isinstance(value, Index):
            return value
        try:
            name, kind, url = value
        except (TypeError, ValueError):
            raise UserInputError(f"an index is (name, kind, url), got {value!r}") from None
        return cls(str(name), kind, str(url))  # type: ignore[arg-type]


class _Target:
    """The target platform both a request and a lock describe (python, arch, glibc or musl)."""

    python: str
    arch: str
    glibc: str | None
    musl: str | None

    @property
    def python_version(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        return platform_tags(self.arch, glibc=self.glibc, musl=self.musl)


@dataclass(frozen=True)
class LockRequest(_Target):
    """What to lock, in plain values (a matrix cell adapts to it).

    ``python``: "3.11" (or "3.11.2": the patch level only feeds ``python_full_version`` markers).
    ``glibc``: the base's glibc ("2.36"), or ``musl`` ("1.2") for musllinux bases; ``arch``: machine.
    ``indexes``: extra to the host pip configuration, as ``Index`` or ``(name, kind, url)``.
    ``extra_tools``: requirements the builder stage needs but the image's environment must not get
    (e.g. "pyelftools==0.33"); resolved and locked separately.
    ``skip_unreachable``: names of extra indexes (or "*") that may be skipped when unreachable."""

    requirements: Sequence[str]
    python: str = "3.11"
    glibc: str | None = "2.36"
    arch: str = "x86_64"
    indexes: Sequence[Index | tuple[str, str, str]] = ()
    extra_tools: Sequence[str] = ()
    musl: str | None = None
    cell_id: str = ""
    regenerate: str | None = None
    skip_unreachable: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", tuple(self.requirements))
        object.__setattr__(self, "extra_tools", tuple(self.extra_tools))
        object.__setattr__(self, "indexes", tuple(Index.of(i) for i in self.indexes))
        object.__setattr__(self, "skip_unreachable", tuple(self.skip_unreachable))
        if self.musl:
            object.__setattr__(self, "glibc", None)
        self.validate()

    def validate(self) -> None:
        where = f"cell {self.cell_id}: " if self.cell_id else ""
        if not re.fullmatch(r"3\.\d{1,2}(\.\d{1,2})?", self.python):
            raise UserInputError(f"{where}python must look like 3.11, got {self.python!r}")
        if bool(self.glibc) == bool(self.musl):
            raise UserInputError(f"{where}give exactly one of glibc (e.g. 2.36) or musl (e.g. 1.2)")
        libc_version = self.glibc or self.musl or ""
        if not re.fullmatch(r"\d+\.\d+", libc_version):
            raise UserInputError(f"{where}libc version must look like 2.36 or 1.2, got {libc_version!r}")
        if self.arch not in ARCHES:
            raise UserInputError(f"{where}unknown arch {self.arch!r} (known: {', '.join(ARCHES)})")
        if not self.requirements:
            raise UserInputError(f"{where}nothing to lock: no requirements")
        for text in (*self.requirements, *self.extra_tools):
            parse_requirement(text, where)
        names = set()
        for ix in self.indexes:
            if ix.kind not in ("index", "find-links"):
                raise UserInputError(f"{where}index {ix.name!r}: kind must be index or find-links, got {ix.kind!r}")
            if ix.name in names:
                raise UserInputError(f"{where}index {ix.name!r} is given twice")
            names.add(ix.name)
            if redact_url(ix.url) != ix.url:
                raise UserInputError(
                    f"{where}index {ix.name!r}: its URL carries credentials; put them in pip's configuration "
                    "(pip.conf, ~/.netrc or keyring), which imagegen's host-side pip reads, not in the matrix")

    def marker_env(self) -> dict[str, str]:
        return marker_env(self.python, self.arch)


@dataclass(frozen=True)
class LockedWheel:
    name: str  # as the distribution spells it
    version: str
    sha256: str
    filename: str
    url: str  # source, credentials redacted
    via: tuple[str, ...] = ()  # canonical names of what needs it; () = requested

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Lock(_Target):
    cell_id: str
    python: str
    arch: str
    glibc: str | None
    musl: str | None
    indexes: tuple[Index, ...]
    requirements: tuple[str, ...]
    extra_tools: tuple[str, ...]
    inputs: str  # digest of the request (lock_matches)
    wheels: tuple[LockedWheel, ...]
    tools: tuple[LockedWheel, ...] = ()
    skipped_indexes: tuple[str, ...] = ()
    regenerate: str = ""

    @property
    def target(self) -> str:
        libc = f"glibc {self.glibc}" if self.glibc else f"musl {self.musl}"
        return f"CPython {self.python} ({self.abi}), linux {self.arch}, {libc}"

    def all_wheels(self) -> tuple[LockedWheel, ...]:
        return self.wheels + self.tools


# --- target description ------------------------------------------------------------------------


def platform_tags(arch: str, *, glibc: str | None = None, musl: str | None = None) -> list[str]:
    """Every platform tag a target accepts, most specific first (pip prefers earlier tags).

    glibc 2.36 on x86_64: manylinux_2_36_x86_64 ... manylinux_2_5_x86_64 and the legacy aliases
    manylinux2014 (2.17), manylinux2010 (2.12), manylinux1 (2.5). pip does not expand a single
    ``--platform manylinux_2_36_x86_64`` downwards, so all are passed."""
    tags: list[str] = []
    if musl:
        major, minor = (int(x) for x in musl.split("."))
        return [f"musllinux_{major}_{m}_{arch}" for m in range(minor, 0, -1)]
    assert glibc
    major, minor = (int(x) for x in glibc.split("."))
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    legacy_arches = {"manylinux2014": ARCHES, "manylinux2010": ("x86_64", "i686"), "manylinux1": ("x86_64", "i686")}
    for m in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{m}_{arch}")
        alias = legacy.get(m)
        if alias and arch in legacy_arches[alias]:
            tags.append(f"{alias}_{arch}")
    return tags


def marker_env(python: str, arch: str) -> dict[str, str]:
    """PEP 508 marker environment of the target (Linux, CPython)."""
    parts = python.split(".")
    full = python if len(parts) == 3 else f"{python}.0"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": arch,
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "platform_python_implementation": "CPython",
        "python_version": ".".join(parts[:2]),
        "sys_platform": "linux",
    }



def parse_requirement(text: str, where: str = "") -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise UserInputError(f"{where}invalid requirement {text!r}: {str(exc).splitlines()[0]}") from None


def inputs_digest(req: LockRequest) -> str:
    """What a lock was made from; a lock whose digest differs from its cell's request is stale."""
    data = {
        "format": LOCK_FORMAT,
        "requirements": sorted(str(Requirement(r)) for r in req.requirements),
        "tools": sorted(str(Requirement(r)) for r in req.extra_tools),
        "python": req.python,
        "arch": req.arch,
        "glibc": req.glibc,
        "musl": req.musl,
        "indexes": sorted([ix.name, ix.kind, redact_url(ix.url)] for ix in req.indexes),
    }
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def lock_matches(lock: Lock, req: LockRequest) -> bool:
    """The lock was made from exactly this request (requirements, tools, target, indexes)."""
    return lock.inputs == inputs_digest(req)


# --- lock files ----------------------------------------------------------------------------------


def lock_text(lock: Lock) -> str:
    """The lock file's text (write_lock writes it)."""
    wheels = sorted(lock.wheels, key=lambda w: w.key)
    tools = sorted(lock.tools, key=lambda w: w.key)
    meta = {
        "format": LOCK_FORMAT, "cell": lock.cell_id, "python": lock.python, "arch": lock.arch,
        "glibc": lock.glibc, "musl": lock.musl, "requirements": list(lock.requirements),
        "tools": list(lock.extra_tools), "inputs": lock.inputs, "skipped": sorted(lock.skipped_indexes),
        "indexes": [[ix.name, ix.kind, redact_url(ix.url)] for ix in lock.indexes],
        "regenerate": lock.regenerate,
    }
    lines = [
        f"# imagegen lock file{' for ' + lock.cell_id if lock.cell_id else ''}. Generated; do not edit.",
    ]
    if lock.regenerate:
        lines.append(f"# regenerate: {lock.regenerate}")
    lines += [
        f"# target: {lock.target}; platform tags {lock.platforms[0]} ... {lock.platforms[-1]}",
        "# sources: the host pip configuration" + (", plus:" if lock.indexes else ""),
    ]
    for ix in lock.indexes:
        note = " (unreachable at lock time: skipped)" if ix.name in lock.skipped_indexes else ""
        lines.append(f"#   {ix.kind} {ix.name}: {redact_url(ix.url)}{note}")
    lines.append("# requirements: " + ", ".join(lock.requirements))
    if lock.extra_tools:
        lines.append("# builder tools (not in the image's environment; #tool lines below): "
                     + ", ".join(lock.extra_tools))
    lines += [
        "# install: pip install --no-index --no-deps --require-hashes --find-links WHEELS -r THIS_FILE",
        "# meta: " + json.dumps(meta, sort_keys=True, separators=(",", ":")),
        "",
    ]
    for w in wheels:
        lines += _entry_lines(w)
    if tools:
        lines += ["", "# --- builder-only tools: pip ignores these lines; `imagegen` stages them as wheels/tools.lock"]
        for w in tools:
            lines += ["#tool " + ln for ln in _entry_lines(w)]
    return "\n".join(lines) + "\n"


def _entry_lines(w: LockedWheel) -> list[str]:
    via = "requested" if not w.via else "via " + ", ".join(w.via)
    return [
        f"{w.pin} \\",
        f"    --hash=sha256:{w.sha256}",
        f"    # {w.filename} ({via})",
        f"    # from {redact_url(w.url)}",
    ]


def write_lock(lock: Lock, path: Path) -> None:
    """Write atomically (temporary file + rename): a reader never sees half a lock."""
    missing = [w.pin for w in lock.all_wheels() if not re.fullmatch(r"[0-9a-f]{64}", w.sha256)]
    if missing:
        raise ImagegenError(f"refusing to write {path}: no sha256 for {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(lock_text(lock))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ImagegenError(f"cannot write {path}: {exc.strerror or exc}") from None


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")
_HASH = re.compile(r"^--hash=sha256:([0-9a-f]{64})$")
_FILE = re.compile(r"^# (\S+\.whl) \((requested|via .+)\)$")
_FROM = re.compile(r"^# from (\S+)$")


def read_lock(path: Path) -> Lock:
    """Parse a lock file written by write_lock; UserInputError (with the line) if it is not one."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserInputError(f"cannot read lock file {path}: {exc.strerror or exc}") from None
    meta = None
    entries: dict[bool, list[LockedWheel]] = {False: [], True: []}
    current: dict | None = None

    def bad(n: int, line: str, why: str) -> UserInputError:
        return UserInputError(f"{path}:{n}: {why}: {line.strip()[:80]!r} (regenerate it with `imagegen lock`)")

    def flush(n: int) -> None:
        nonlocal current
        if current is None:
            return
        if not all(k in current for k in ("sha256", "filename", "url")):
            raise bad(n, current["pin"], "incomplete entry")
        entries[current["tool"]].append(LockedWheel(
            name=current["name"], version=current["version"], sha256=current["sha256"],
            filename=current["filename"], url=current["url"], via=current["via"]))
        current = None

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw
        tool = line.startswith("#tool ")
        if tool:
            line = line[len("#tool "):]
        s = line.strip()
        if not s:
            continue
        if s.startswith("# meta: ") and meta is None:
            try:
                meta = json.loads(s[len("# meta: "):])
            except ValueError:
                raise bad(n, s, "unreadable meta line") from None
            continue
        m = _PIN.match(s)
        if m:
            flush(n)
            current = {"name": m.group(1), "version": m.group(2), "pin": s, "tool": tool}
            continue
        if current is not None and current["tool"] == tool:
            if (m := _HASH.match(s)):
                current["sha256"] = m.group(1)
                continue
            if (m := _FILE.match(s)):
                current["filename"] = m.group(1)
                current["via"] = () if m.group(2) == "requested" else tuple(m.group(2)[4:].split(", "))
                continue
            if (m := _FROM.match(s)):
                current["url"] = m.group(1)
                flush(n)
                continue
        if s.startswith("#") and not tool:
            continue  # header and free comments
        raise bad(n, raw, "not an imagegen lock line")
    flush(len(text.splitlines()))
    if meta is None or meta.get("format") != LOCK_FORMAT:
        raise UserInputError(f"{path}: not an imagegen lock file (format {LOCK_FORMAT}); regenerate it with "
                             "`imagegen lock`")
    try:
        return Lock(
            cell_id=meta["cell"], python=meta["python"], arch=meta["arch"], glibc=meta.get("glibc"),
            musl=meta.get("musl"), indexes=tuple(Index(*ix) for ix in meta.get("indexes", [])),
            requirements=tuple(meta["requirements"]), extra_tools=tuple(meta.get("tools", [])),
            inputs=meta["inputs"], wheels=tuple(entries[False]), tools=tuple(entries[True]),
            skipped_indexes=tuple(meta.get("skipped", [])), regenerate=meta.get("regenerate", ""),
        )
    except (KeyError, TypeError) as exc:
        raise UserInputError(f"{path}: incomplete meta line ({exc}); regenerate it with `imagegen lock`") from None


def requirements_text(wheels: Iterable[LockedWheel]) -> str:
    """Minimal pip requirements (pins + hashes, nothing else) for a build context: no URL, no host."""
    return "".join(f"{w.pin} --hash=sha256:{w.sha256}\n" for w in sorted(wheels, key=lambda w: w.key))
