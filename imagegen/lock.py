"""Host-side resolution of a cell's wheels for its TARGET platform, and lock files with sha256 hashes.

Resolution runs the host's own pip (``python -m pip`` of imagegen's environment, or ``$IMAGEGEN_PIP``)
with the host's pip configuration untouched: index-url, extra-index-url, find-links, cert, client-cert,
proxy, trusted-host, netrc/keyring. The request only *adds* its extra indexes. The target is given to
pip as ``--platform`` (every manylinux tag the base's glibc accepts), ``--python-version``,
``--implementation cp`` and ``--abi``; pip's installation report (``--dry-run --report``) gives each
distribution's URL and hash.

Two pip limitations are handled here:

* pip evaluates environment markers with the HOST interpreter even when it resolves for another Python
  or machine (a ``exceptiongroup; python_version < "3.11"`` dependency is dropped when a 3.10 target is
  resolved on a 3.11 host). After each resolution the dependency closure is recomputed under the
  target's markers: dependencies the target needs are added as explicit requirements and pip runs again;
  distributions only the host's markers wanted are dropped.
* An unreachable extra index makes pip retry for minutes. Every extra index is probed first (a few
  seconds) and an unreachable one is an error naming it, unless skipping it is safe or was asked for
  (see ``resolve``).

Lock file format (``write_lock``/``read_lock``): pip requirements format, ``name==version`` plus
``--hash=sha256:`` per wheel, so ``pip install --require-hashes -r`` reads it as is; a header of comments
(cell, target, extra indexes, requirements, how to regenerate, and one ``# meta:`` JSON line that
``read_lock`` parses); per wheel a comment with its file name, its source URL (credentials redacted) and
what needs it. Builder-only tools are a trailing block of ``#tool `` lines that pip ignores. Sorted, no
timestamps: the same inputs give the same bytes.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Callable, Iterable, Literal, Optional, Sequence

import typer
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from .console import log, out, warn
from . import userpaths
from .errors import ImagegenError, UserInputError

LOCK_FORMAT = 1
ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x", "i686", "armv7l")
# pip >= 25.3 resolves from metadata only (PEP 658 files, or HTTP range requests with fast-deps) under
# --dry-run; older pips download every wheel to read its metadata (pypa/pip#12603, fixed by #13482).
PIP_METADATA_ONLY = Version("25.3")
PIP_MIN = Version("22.2")  # --dry-run --report
REDACTED = "***"


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


@dataclass(frozen=True)
class LockRequest:
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
            _parse_requirement(text, where)
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

    @property
    def python_version(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        return platform_tags(self.arch, glibc=self.glibc, musl=self.musl)

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
class Lock:
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
    def python_version(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        return platform_tags(self.arch, glibc=self.glibc, musl=self.musl)

    @property
    def target(self) -> str:
        libc = f"glibc {self.glibc}" if self.glibc else f"musl {self.musl}"
        return f"CPython {self.python} ({self.abi}), linux {self.arch}, {libc}"

    def all_wheels(self) -> tuple[LockedWheel, ...]:
        return self.wheels + self.tools


class IndexUnreachable(ImagegenError):
    pass


class MissingWheel(UserInputError):
    pass


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


def target_args(python_version: str, abi: str, platforms: Iterable[str]) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for p in platforms:
        args += ["--platform", p]
    return args


def _parse_requirement(text: str, where: str = "") -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise UserInputError(f"{where}invalid requirement {text!r}: {str(exc).splitlines()[0]}") from None


# --- credentials never leave the host ------------------------------------------------------------

_SECRET_QUERY = re.compile(r"(token|key|secret|sig|signature|password|passwd|pwd|auth|credential|x-amz-|x-goog-)",
                           re.I)


def redact_url(url: str) -> str:
    """The URL without credentials: user:password@ becomes ***@, secret-looking query values become ***.

    Fragments are dropped (a #sha256= fragment is recorded separately)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={REDACTED if _SECRET_QUERY.search(k) else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def is_redacted(url: str) -> bool:
    return REDACTED in url


# --- the host's pip ------------------------------------------------------------------------------

_active: set[subprocess.Popen] = set()
_active_lock = threading.Lock()


def pip_command() -> list[str]:
    """How to run pip: ``$IMAGEGEN_PIP`` (a command, e.g. "/opt/tools/bin/python -m pip") or this
    interpreter's pip. Either way it reads the host's pip configuration."""
    custom = os.environ.get("IMAGEGEN_PIP", "").strip()
    return shlex.split(custom) if custom else [sys.executable, "-m", "pip"]


@functools.lru_cache(maxsize=8)
def _pip_version(cmd: tuple[str, ...]) -> Version:
    try:
        proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60,
                              env=_base_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImagegenError(f"cannot run pip ({shlex.join(cmd)}): {exc}") from None
    m = re.match(r"pip (\S+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise ImagegenError(f"cannot run pip ({shlex.join(cmd)}): {_last_line(proc.stderr or proc.stdout)}",
                            hint="install pip in imagegen's environment or set IMAGEGEN_PIP")
    version = Version(m.group(1))
    if version < PIP_MIN:
        raise ImagegenError(f"pip {version} is too old to resolve for a target (needs >= {PIP_MIN})",
                            hint="pip install -U pip in imagegen's environment, or set IMAGEGEN_PIP")
    return version


def pip_version() -> Version:
    return _pip_version(tuple(pip_command()))


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_NO_INPUT"] = "1"  # never wait for a password prompt
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_PROGRESS_BAR"] = "off"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def pip_env(tmpdir: Path | None = None) -> dict[str, str]:
    """The host environment for pip, with only what would break a target resolution neutralised.

    Where pip looks and how it connects (index, extra index, find-links, cert, client cert, proxy,
    trusted hosts, timeouts, retries, keyring) is left exactly as the host configures it. What pip
    resolves or where it would install is ours: user/prefix/root/target installs, --no-deps, hashes,
    a host-only require-virtualenv. TMPDIR points into the cache so big downloads stay on its disk."""
    env = _base_env()
    for key in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_PLATFORM", "PIP_PYTHON_VERSION", "PIP_ABI",
                "PIP_IMPLEMENTATION", "PIP_ONLY_BINARY", "PIP_NO_BINARY", "PIP_REQUIREMENT", "PIP_EDITABLE",
                "PIP_UPGRADE", "PIP_DRY_RUN", "PIP_REPORT"):
        env.pop(key, None)
    env.update({"PIP_USER": "0", "PIP_NO_DEPS": "0", "PIP_REQUIRE_HASHES": "0", "PIP_REQUIRE_VIRTUALENV": "0",
                "PIP_IGNORE_INSTALLED": "1"})
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def run_pip(args: list[str], *, env: dict[str, str], timeout: float | None = None,
            group: set[subprocess.Popen] | None = None) -> subprocess.CompletedProcess:
    """Run pip, capturing its output. terminate_children(group) (or Ctrl-C) stops it."""
    cmd = pip_command() + args
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=env, text=True, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ImagegenError(f"cannot run pip ({shlex.join(cmd[:3])}): {exc}") from None
    with _active_lock:
        _active.add(proc)
        if group is not None:
            group.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\nERROR: pip did not finish within {timeout:.0f}s"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        with _active_lock:
            _active.discard(proc)
            if group is not None:
                group.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def terminate_children(group: set[subprocess.Popen] | None = None) -> None:
    """Stop the pips of ``group`` (a failed sibling job), or every pip this process started (Ctrl-C)."""
    with _active_lock:
        procs = list(_active if group is None else group)
    for p in procs:
        try:
            p.terminate()
        except OSError:
            pass


@functools.lru_cache(maxsize=4)
def _pip_config_items(cmd: tuple[str, ...], pip_vars: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`pip config list` (pip's merged view of its files and PIP_* variables); cached per PIP_* set."""
    try:
        proc = subprocess.run([*cmd, "config", "list"], capture_output=True, text=True, timeout=60,
                              env=_base_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    items: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            items[key.strip()] = str(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            items[key.strip()] = value.strip().strip("'\"")
    return items


def pip_setting(key: str, command: str = "download") -> str | None:
    """The effective value of a pip option as pip itself would see it: environment, then the command's
    section, then [global] (pip's own precedence)."""
    pip_vars = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("PIP_", "XDG_CONFIG")) or k == "HOME"))
    items = _pip_config_items(tuple(pip_command()), pip_vars)
    for section in (":env:", command, "global"):
        if f"{section}.{key}" in items:
            return items[f"{section}.{key}"]
    return None


def host_sources() -> str:
    """The host pip configuration's package sources, redacted, for messages."""
    if (pip_setting("no-index", "install") or "").lower() in ("1", "true", "yes", "on"):
        parts = ["no index"]
    else:
        parts = [redact_url(pip_setting("index-url", "install") or "https://pypi.org/simple")]
        parts += [redact_url(u) for u in (pip_setting("extra-index-url", "install") or "").split()]
    parts += [f"find-links {redact_url(u)}" for u in (pip_setting("find-links", "install") or "").split()]
    return ", ".join(parts)


# --- probing extra indexes -------------------------------------------------------------------------

_probe_cache: dict[str, str | None] = {}
_probe_lock = threading.Lock()


def probe_timeout() -> float:
    try:
        return float(os.environ.get("IMAGEGEN_INDEX_TIMEOUT", "8"))
    except ValueError:
        return 8.0


def _ssl_context(host: str) -> ssl.SSLContext:
    trusted = (pip_setting("trusted-host") or "").split()
    if host in trusted or any(t.split(":")[0] == host for t in trusted):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cert = pip_setting("cert")
    if cert:
        ctx = ssl.create_default_context(cafile=cert) if Path(cert).is_file() else \
            ssl.create_default_context(capath=cert)
    else:
        ctx = ssl.create_default_context()
        try:  # pip's default trust store is certifi's bundle
            import certifi

            ctx.load_verify_locations(cafile=certifi.where())
        except (ImportError, OSError):
            pass
    client = pip_setting("client-cert")
    if client:
        ctx.load_cert_chain(client)
    return ctx


def probe(url: str, timeout: float | None = None) -> str | None:
    """None if the index answers (any HTTP status but a proxy's 502/503/504), else why not.

    Uses pip's cert, client-cert, proxy and trusted-host settings. Cached per process."""
    with _probe_lock:
        if url in _probe_cache:
            return _probe_cache[url]
    reason = _probe(url, timeout if timeout is not None else probe_timeout())
    with _probe_lock:
        _probe_cache[url] = reason
    return reason


def _probe(url: str, timeout: float) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parts.path) if parts.scheme else url)
        return None if path.exists() else f"{path} does not exist"
    if parts.scheme not in ("http", "https"):
        return f"unsupported URL scheme {parts.scheme!r}"
    handlers: list[urllib.request.BaseHandler] = []
    proxy = pip_setting("proxy")
    if proxy:
        handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
    try:
        if parts.scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(parts.hostname or "")))
    except (ssl.SSLError, OSError) as exc:
        return f"cannot load pip's TLS settings: {exc}"
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "imagegen-probe", "Accept": "text/html"})
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (502, 503, 504):
            return f"HTTP {exc.code} {exc.reason}"
        return None  # it answered: auth, 404 on a root page... pip handles those
    except urllib.error.URLError as exc:
        return _net_reason(exc.reason, timeout, time.monotonic() - started)
    except (OSError, ssl.SSLError) as exc:
        return _net_reason(exc, timeout, time.monotonic() - started)


def _net_reason(exc: object, timeout: float, elapsed: float) -> str:
    if isinstance(exc, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(exc, (TimeoutError, socket.timeout)) or elapsed >= timeout * 0.95:
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        cert = pip_setting("cert")
        return f"TLS certificate verification failed ({'pip cert ' + cert if cert else 'pip has no cert setting'})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _local_label_pins(requirements: Iterable[str]) -> bool:
    """True if every requirement is an exact pin whose version carries a local label (2.13.0+cpu).

    A local label names the build, so the same file found elsewhere (a mirror, find-links) is the
    same build; a plain version (paddlepaddle-gpu==3.3.1 exists once per CUDA index) is not."""
    for text in requirements:
        req = Requirement(text)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "===") or "+" not in specs[0].version:
            return False
    return True


def _env_skip_list() -> set[str]:
    return {s.strip() for s in os.environ.get("IMAGEGEN_SKIP_UNREACHABLE_INDEXES", "").split(",") if s.strip()}


def check_indexes(req: LockRequest, skip: Iterable[str] = (), *, quiet: bool = False
                  ) -> tuple[list[Index], list[str]]:
    """Probe the request's extra indexes (in parallel). Returns (usable, skipped names).

    An unreachable index is skipped, with a warning, when its name (or "*") is in ``skip``,
    ``req.skip_unreachable`` or $IMAGEGEN_SKIP_UNREACHABLE_INDEXES, or when every requirement pins a
    local version label (see _local_label_pins). Otherwise IndexUnreachable names it."""
    indexes = list(req.indexes)
    if not indexes:
        return [], []
    allowed = set(skip) | set(req.skip_unreachable) | _env_skip_list()
    with ThreadPoolExecutor(max_workers=min(8, len(indexes))) as pool:
        reasons = list(pool.map(lambda ix: probe(ix.url), indexes))
    usable, skipped = [], []
    for ix, reason in zip(indexes, reasons):
        if reason is None:
            usable.append(ix)
            continue
        where = f"{req.cell_id}: " if req.cell_id else ""
        if ix.name in allowed or "*" in allowed or _local_label_pins(req.requirements):
            if not quiet:
                warn(f"{where}extra index {ix.name!r} ({redact_url(ix.url)}) is unreachable ({reason}); "
                     f"resolving from the host pip configuration without it")
            skipped.append(ix.name)
            continue
        raise IndexUnreachable(
            f"{where}extra index {ix.name!r} ({redact_url(ix.url)}) is unreachable: {reason}",
            hint=f"if your pip configuration carries the same wheels (a mirror), rerun with "
                 f"--skip-unreachable-index {ix.name} or IMAGEGEN_SKIP_UNREACHABLE_INDEXES={ix.name}")
    return usable, skipped


# --- resolution ----------------------------------------------------------------------------------


@dataclass
class _Dist:
    name: str
    version: str
    url: str
    sha256: str | None
    requires: list[str]
    requested_extras: tuple[str, ...] = ()
    yanked: bool = False
    requires_python: str | None = None


def _parse_report(path: Path) -> dict[str, _Dist]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImagegenError(f"pip wrote no readable installation report ({exc})") from None
    dists: dict[str, _Dist] = {}
    for item in data.get("install", []):
        meta = item.get("metadata", {})
        info = item.get("download_info") or {}
        archive = info.get("archive_info") or {}
        sha = (archive.get("hashes") or {}).get("sha256")
        if not sha and str(archive.get("hash", "")).startswith("sha256="):
            sha = archive["hash"].split("=", 1)[1]
        if "dir_info" in info or "vcs_info" in info:
            raise UserInputError(f"{meta.get('name')}: only wheels can be locked, not {info.get('url')}")
        d = _Dist(name=meta["name"], version=meta["version"], url=info.get("url", ""), sha256=sha,
                  requires=list(meta.get("requires_dist") or []),
                  requested_extras=tuple(item.get("requested_extras") or ()), yanked=bool(item.get("is_yanked")),
                  requires_python=meta.get("requires_python"))
        dists[canonicalize_name(d.name)] = d
    return dists


def _filename(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def _closure(dists: dict[str, _Dist], top: list[Requirement], env: dict[str, str]
             ) -> tuple[dict[str, set[str]], list[str]]:
    """The target's dependency closure over ``dists``: {name: names needing it ("" = requested)} and
    the requirements the target needs that ``dists`` does not satisfy (to be added and re-resolved)."""
    via: dict[str, set[str]] = defaultdict(set)
    extras: dict[str, set[str]] = defaultdict(set)
    unmet: list[str] = []
    work: list[str] = []

    def need(req: Requirement, parent: str) -> None:
        key = canonicalize_name(req.name)
        first = key not in via
        via[key].add(parent)
        new_extras = set(req.extras) - extras[key]
        extras[key] |= set(req.extras)
        d = dists.get(key)
        if d is None or (req.specifier and not req.specifier.contains(d.version, prereleases=True)):
            plain = Requirement(str(req))
            plain.marker = None
            unmet.append(str(plain))
            return
        if first or new_extras:
            work.append(key)

    for r in top:
        need(r, "")
    while work:
        key = work.pop()
        d = dists[key]
        for text in d.requires:
            try:
                r = Requirement(text)
            except InvalidRequirement:
                continue
            if r.marker is not None:
                ok = any(r.marker.evaluate({**env, "extra": e}) for e in (extras[key] | {""}))
                if not ok:
                    continue
            need(r, key)
    return via, sorted(set(unmet))


def _run_resolution(reqs: list[str], req: LockRequest, indexes: list[Index], workdir: Path, label: str,
                    ignore_requires_python: bool = False) -> dict[str, _Dist]:
    workdir.mkdir(parents=True, exist_ok=True)
    reqfile = workdir / "requirements.in"
    reqfile.write_text("".join(f"{r}\n" for r in reqs))
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(workdir / "target"), *target_args(req.python_version, req.abi, req.platforms)]
    for ix in indexes:
        args += ["--extra-index-url" if ix.kind == "index" else "--find-links", ix.url]
    if _use_fast_deps():
        args.append("--use-feature=fast-deps")
    if ignore_requires_python:
        args.append("--ignore-requires-python")  # checked by _check_requires_python instead
    args += ["-r", str(reqfile)]
    proc = run_pip(args, env=pip_env(workdir))
    if proc.returncode != 0 and "fast-deps" in proc.stderr and "invalid choice" in proc.stderr:
        _fast_deps_broken.set()
        return _run_resolution(reqs, req, indexes, workdir, label, ignore_requires_python)
    host_py = re.search(r"requires a different Python: (\S+) not in", proc.stderr)
    if proc.returncode != 0 and host_py and not ignore_requires_python and \
            not host_py.group(1).startswith(req.python_version + "."):
        # Older pips check a wheel's Requires-Python against the interpreter running pip, not the
        # target: let pip skip the check and do it for the target (_check_requires_python).
        return _run_resolution(reqs, req, indexes, workdir, label, True)
    if proc.returncode != 0:
        raise _resolution_error(proc.stderr, req, indexes, label)
    return _parse_report(report)


_fast_deps_broken = threading.Event()
_slow_pip_warned = threading.Event()


def _use_fast_deps() -> bool:
    setting = os.environ.get("IMAGEGEN_PIP_FAST_DEPS", "auto").lower()
    if setting in ("0", "no", "false", "off") or _fast_deps_broken.is_set():
        return False
    if setting in ("1", "yes", "true", "on"):
        return True
    if pip_version() >= PIP_METADATA_ONLY:
        return True
    if not _slow_pip_warned.is_set():
        _slow_pip_warned.set()
        log(f"note: pip {pip_version()} downloads every wheel to read its metadata while resolving; "
            f"pip >= {PIP_METADATA_ONLY} resolves from metadata only (upgrade pip in imagegen's environment "
            f"or set IMAGEGEN_PIP)")
    return False


def _resolution_error(stderr: str, req: LockRequest, indexes: list[Index], label: str) -> ImagegenError:
    where = f"{req.cell_id}: " if req.cell_id else ""
    target = (f"CPython {req.python_version} on {req.platforms[0]}"
              f"{' and older' if len(req.platforms) > 1 else ''}")
    sources = host_sources() + "".join(f", {ix.kind} {ix.name!r} ({redact_url(ix.url)})" for ix in indexes)
    skipped = [ix for ix in req.indexes if ix not in indexes]
    note = ("; skipped as unreachable: " + ", ".join(f"{ix.kind} {ix.name!r}" for ix in skipped)) if skipped else ""
    if re.search(r"No space left on device|\[Errno 28\]", stderr):
        from .wheelhouse import cache_root

        return ImagegenError(f"{where}disk full while resolving {label} (pip works under {cache_root()}/tmp)",
                             hint="free space or point IMAGEGEN_CACHE elsewhere")
    m = re.search(r"Could not find a version that satisfies the requirement (\S+)(?: \(from versions: ([^)]*)\))?",
                  stderr)
    if m:
        seen = (m.group(2) or "none").strip()
        if len(seen) > 120:
            seen = seen[:117] + "..."
        return MissingWheel(f"{where}no wheel of {m.group(1)} for {target} in {sources} "
                            f"(versions with a compatible wheel: {seen}){note}")
    m = re.search(r"Package '([^']+)' requires a different Python: \S+ not in '([^']+)'", stderr)
    if m:
        return MissingWheel(f"{where}{m.group(1)} requires Python {m.group(2)}; the target is CPython "
                            f"{req.python_version} ({label}){note}")
    if "ResolutionImpossible" in stderr or "conflicting dependencies" in stderr:
        causes = re.findall(r"^\s{4}(\S.*depends on .*)$", stderr, re.M)
        detail = "; ".join(causes[:4]) if causes else _last_line(stderr)
        return UserInputError(f"{where}the requirements of {label} conflict for {target}: {detail}{note}")
    if "is not a supported wheel on this platform" in stderr:
        return MissingWheel(f"{where}{_last_line(stderr)} (target {target})")
    return ImagegenError(f"{where}pip could not resolve {label} for {target}: {_last_line(stderr)}{note}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    line = (errors or lines or ["(no output)"])[-1]
    return redact_text(line.removeprefix("ERROR: "))


def redact_text(text: str) -> str:
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", lambda m: redact_url(m.group(0)), text, flags=re.I)


def _resolve_set(reqs: Sequence[str], req: LockRequest, indexes: list[Index], workdir: Path, label: str
                 ) -> list[tuple[_Dist, tuple[str, ...]]]:
    """Resolve one requirement set for the target; return [(dist, via)] of the target's closure."""
    env = req.marker_env()
    top: list[Requirement] = []
    for text in reqs:
        r = _parse_requirement(text)
        if r.marker is not None and not r.marker.evaluate({**env, "extra": ""}):
            continue  # not for this target
        r.marker = None
        top.append(r)
    if not top:
        return []
    pinned = [str(r) for r in top]
    added: list[str] = []
    for _round in range(6):
        dists = _run_resolution(pinned + added, req, indexes, workdir, label)
        # the closure of the cell's own requirements only: what was added to steer pip is kept only
        # if something the target installs really needs it
        via, unmet = _closure(dists, top, env)
        if not unmet:
            break
        new = [u for u in unmet if u not in added]
        if not new:
            raise ImagegenError(f"{req.cell_id + ': ' if req.cell_id else ''}pip's resolution of {label} does "
                                f"not satisfy {', '.join(unmet)} for CPython {req.python}")
        log(f"{req.cell_id or label}: pip evaluated markers for the host; adding what {req.python} needs: "
            f"{', '.join(new)}")
        added += new
    else:
        raise ImagegenError(f"{req.cell_id}: the dependency closure of {label} did not settle for {req.python}")
    result = []
    for key in sorted(via):
        if key not in dists:
            continue
        needers = tuple(sorted(n for n in via[key] if n))
        if "" in via[key] and any(canonicalize_name(r.name) == key for r in top):
            needers = ()
        result.append((dists[key], needers))
    _check_requires_python([d for d, _ in result], req)
    dropped = sorted(set(dists) - set(via))
    if dropped:
        log(f"{req.cell_id or label}: not needed on the target (only the host's markers asked for them): "
            f"{', '.join(dropped)}")
    for d, _ in result:
        if d.yanked:
            warn(f"{req.cell_id or label}: {d.name}=={d.version} is yanked from its index")
    return result


def _check_requires_python(dists: list[_Dist], req: LockRequest) -> None:
    version = req.marker_env()["python_full_version"]
    for d in dists:
        if not d.requires_python:
            continue
        try:
            ok = SpecifierSet(d.requires_python).contains(version, prereleases=True)
        except InvalidSpecifier:
            continue
        if not ok:
            hint = (f" (pip {pip_version()} checks Requires-Python against its own interpreter; pip >= "
                    f"{PIP_METADATA_ONLY} picks a compatible version for the target)") \
                if pip_version() < PIP_METADATA_ONLY else ""
            raise MissingWheel(f"{req.cell_id + ': ' if req.cell_id else ''}{d.name}=={d.version} requires Python "
                               f"{d.requires_python}; the target is CPython {req.python}{hint}")


def resolve(req: LockRequest, cell_id: str | None = None, *, skip_unreachable: Iterable[str] = ()) -> Lock:
    """Resolve ``req`` for its target platform and return the Lock (every wheel with its sha256).

    Wheels whose source gives no sha256 (a find-links page without #sha256 fragments) are downloaded
    into the wheel cache to hash them. Raises IndexUnreachable, MissingWheel (exit 2), UserInputError
    (conflict, exit 2) or ImagegenError with a one-line message."""
    from . import wheelhouse

    if cell_id:
        req = replace(req, cell_id=cell_id)
    _ = pip_version()
    indexes, skipped = check_indexes(req, skip_unreachable)
    with wheelhouse.run_dir() as work:
        wheels = _to_locked(_resolve_set(req.requirements, req, indexes, work / "env", "the requirements"), req)
        tools = _to_locked(_resolve_set(req.extra_tools, req, indexes, work / "tools", "the builder tools"), req) \
            if req.extra_tools else []
        hashless = [w for w in wheels + tools if not w.sha256]
        if hashless:
            hashes = wheelhouse.hash_unhashed(hashless, req, indexes)
            wheels = [replace(w, sha256=hashes[w.url]) if not w.sha256 else w for w in wheels]
            tools = [replace(w, sha256=hashes[w.url]) if not w.sha256 else w for w in tools]
    return Lock(
        cell_id=req.cell_id, python=req.python, arch=req.arch, glibc=req.glibc, musl=req.musl,
        indexes=tuple(req.indexes), requirements=tuple(req.requirements), extra_tools=tuple(req.extra_tools),
        inputs=inputs_digest(req), wheels=tuple(wheels), tools=tuple(tools), skipped_indexes=tuple(skipped),
        regenerate=req.regenerate or (f"imagegen lock --variant {req.cell_id}" if req.cell_id else ""),
    )


def _to_locked(items: list[tuple[_Dist, tuple[str, ...]]], req: LockRequest) -> list[LockedWheel]:
    out_: list[LockedWheel] = []
    for d, via in items:
        fname = _filename(d.url)
        if not fname.endswith(".whl"):
            raise MissingWheel(f"{req.cell_id}: {d.name}=={d.version} resolved to {fname}, not a wheel")
        sha = d.sha256
        parts = urllib.parse.urlsplit(d.url)
        if not sha and parts.scheme == "file":
            sha = _sha256_file(Path(urllib.request.url2pathname(parts.path)))
        out_.append(LockedWheel(name=d.name, version=d.version, sha256=sha or "", filename=fname,
                                url=d.url, via=via))
    return out_


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def render_lock(lock: Lock) -> str:
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
        tmp.write_text(render_lock(lock))
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


# --- several cells -------------------------------------------------------------------------------


@dataclass
class CellLock:
    cell_id: str
    path: Path
    status: str  # locked | updated | unchanged | up-to-date | stale | missing
    lock: Lock | None = None
    seconds: float = 0.0
    bytes: int = 0


def lock_status(req: LockRequest, path: Path) -> str:
    """missing | stale | up-to-date, without any network."""
    if not Path(path).exists():
        return "missing"
    try:
        return "up-to-date" if lock_matches(read_lock(path), req) else "stale"
    except UserInputError:
        return "stale"


def lock_cells(requests: dict[str, LockRequest], out_dir: Path, jobs: int = 2, *, upgrade: bool = False,
               fetch: bool = True, skip_unreachable: Iterable[str] = (),
               paths: dict[str, Path] | None = None) -> list[CellLock]:
    """Lock several cells into ``out_dir/<cell-id>.txt`` (or ``paths[cell_id]``), sharing downloads.

    A lock that still matches its request is kept unless ``upgrade``. All cells are resolved (``jobs``
    at a time) and, with ``fetch``, every wheel is put in the cache (each distinct file downloaded once)
    before any lock file is written: a failure writes nothing. Returns one CellLock per cell."""
    from . import wheelhouse

    skip = tuple(skip_unreachable)
    results: dict[str, CellLock] = {}
    todo: list[str] = []
    for cid, req in requests.items():
        path = Path(paths[cid]) if paths and cid in paths else Path(out_dir) / f"{cid}.txt"
        if not upgrade and lock_status(req, path) == "up-to-date":
            results[cid] = CellLock(cid, path, "up-to-date", read_lock(path))
        else:
            results[cid] = CellLock(cid, path, "updated" if path.exists() else "locked")
            todo.append(cid)

    def one(cid: str) -> Lock:
        started = time.monotonic()
        lk = resolve(replace(requests[cid], cell_id=requests[cid].cell_id or cid), skip_unreachable=skip)
        results[cid].seconds = time.monotonic() - started
        log(f"{cid}: resolved {len(lk.wheels)} wheels" + (f" + {len(lk.tools)} tools" if lk.tools else "")
            + f" in {results[cid].seconds:.1f}s")
        return lk

    if todo:
        failures: list[tuple[str, ImagegenError]] = []
        for cid in todo:  # unreachable indexes first: seconds, before minutes of resolving other cells
            try:
                check_indexes(replace(requests[cid], cell_id=requests[cid].cell_id or cid), skip, quiet=True)
            except IndexUnreachable as exc:
                failures.append((cid, exc))
        if failures:
            _raise_first(failures)
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
            futures = {cid: pool.submit(one, cid) for cid in todo}
            try:
                for cid, fut in futures.items():
                    try:
                        results[cid].lock = fut.result()
                    except ImagegenError as exc:
                        failures.append((cid, exc))
            except KeyboardInterrupt:
                for f in futures.values():
                    f.cancel()
                terminate_children()
                raise
        if failures:
            _raise_first(failures)
    if fetch:
        locks = [r.lock for r in results.values() if r.lock is not None]
        wheelhouse.fetch_many(locks, jobs=max(jobs, 4))
        for r in results.values():
            if r.lock is not None:
                r.bytes = sum(wheelhouse.cached_size(w) for w in r.lock.all_wheels())
    for cid in todo:
        r = results[cid]
        assert r.lock is not None
        if r.status == "updated" and r.path.read_text() == render_lock(r.lock):
            r.status = "unchanged"
        write_lock(r.lock, r.path)
    return list(results.values())


def _raise_first(failures: list[tuple[str, ImagegenError]]) -> None:
    cid, exc = failures[0]
    msg = exc.message if exc.message.startswith(cid) else f"{cid}: {exc.message}"
    more = f"; {len(failures) - 1} more cell(s) failed ({', '.join(c for c, _ in failures[1:])})" \
        if len(failures) > 1 else ""
    raise type(exc)(msg + more + "; no lock written", hint=exc.hint)


# --- CLI -----------------------------------------------------------------------------------------

CellSource = Callable[[Path, Optional[list[str]], bool], "dict[str, tuple[LockRequest, Path]]"]
_cell_source: CellSource | None = None


def set_cell_source(fn: CellSource) -> None:
    """Register how `imagegen lock` turns (matrix path, --variant, --all) into {cell id: (request, lock path)}."""
    global _cell_source
    _cell_source = fn


def _default_cell_source(matrix: Path, variant: list[str] | None, all_: bool) -> dict[str, tuple[LockRequest, Path]]:
    from .build import lock_path, lock_request  # the lead's adapters from Cell to LockRequest
    from .cli import _cells

    m, cells = _cells(matrix, variant, all_)
    requests = {}
    for c in cells:
        r = lock_request(c)
        requests[c.id] = (replace(r, cell_id=c.id, regenerate=r.regenerate or f"imagegen lock --variant {c.ref}"),
                          lock_path(m, c))
    return requests


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def lock_command(
    matrix: Annotated[Path, typer.Option("--matrix", "-m", envvar="IMAGEGEN_MATRIX", help="The matrix file.",
                                         callback=userpaths.input_file)]
    = Path("matrix.yaml"),
    variant: Annotated[Optional[list[str]], typer.Option("--variant", "-v", help="Cell selector; repeatable.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every active cell of the matrix.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=16, help="Cells resolved in parallel.")] = 2,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Resolve again even if a lock still matches its "
                                                                  "cell (picks up new dependency releases).")] = False,
    check: Annotated[bool, typer.Option("--check", help="No network: fail if a lock is missing or does not match "
                                                        "its cell.")] = False,
    no_fetch: Annotated[bool, typer.Option("--no-fetch", help="Only write the locks; do not fill the wheel "
                                                              "cache.")] = False,
    skip_unreachable_index: Annotated[Optional[list[str]], typer.Option(
        "--skip-unreachable-index", help="An extra index (by name, or 'all') to leave out when it cannot be "
                                         "reached, resolving from the host pip configuration instead.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
) -> None:
    """Resolve each cell's wheels for its target on this host and write locks/<cell>.txt with sha256 hashes."""
    source = _cell_source or _default_cell_source
    cells = source(matrix, variant, all_)
    if check:
        rows = [(cid, path, lock_status(req, path)) for cid, (req, path) in cells.items()]
        if json_out:
            out.print_json(data=[{"cell": c, "path": str(p), "status": s} for c, p, s in rows])
        else:
            for c, p, s in rows:
                out.print(f"{s:<11} {p}", markup=False)
        bad = [c for c, _, s in rows if s != "up-to-date"]
        if bad:
            raise ImagegenError(f"{len(bad)} lock file(s) missing or stale: {', '.join(bad)}",
                                hint="run `imagegen lock` and commit locks/")
        return
    skip = ["*" if s == "all" else s for s in (skip_unreachable_index or [])]
    results = lock_cells({cid: req for cid, (req, _) in cells.items()}, Path("locks"), jobs, upgrade=upgrade,
                         fetch=not no_fetch, skip_unreachable=skip,
                         paths={cid: path for cid, (_, path) in cells.items()})
    if json_out:
        out.print_json(data=[{"cell": r.cell_id, "path": str(r.path), "status": r.status,
                              "wheels": len(r.lock.wheels) if r.lock else 0,
                              "bytes": r.bytes, "seconds": round(r.seconds, 2)} for r in results])
        return
    for r in results:
        n = len(r.lock.wheels) if r.lock else 0
        size = f"  {_size(r.bytes)}" if r.bytes else ""
        out.print(f"{r.status:<10} {r.path}  ({n} wheels{size})", markup=False)
