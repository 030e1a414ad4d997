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

The request and lock models and the lock-file format are in ``imagegen.lockfile``; running the
host's pip is ``imagegen.hostpip``; fetching and staging wheels is ``imagegen.wheelhouse``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from . import paths, settings, wheelhouse
from .console import log, warn
from .errors import ImagegenError, UserInputError
from .hostpip import (
    PIP_METADATA_ONLY,
    host_sources,
    last_line,
    pip_command,
    pip_env,
    pip_setting,
    pip_version,
    run_pip,
    target_args,
    terminate_children,
)
from .lockfile import (
    Index,
    Lock,
    LockedWheel,
    LockRequest,
    inputs_digest,
    lock_matches,
    lock_text,
    marker_env,
    parse_requirement,
    platform_tags,
    read_lock,
    requirements_text,
    write_lock,
)
from .redact import is_redacted, redact_text, redact_url

__all__ = [  # the resolver, plus the model names callers of imagegen.lock use with it
    "CellLock", "Index", "IndexUnreachable", "Lock", "LockRequest", "LockedWheel", "MissingWheel", "check_indexes",
    "inputs_digest", "is_redacted", "lock_cells", "lock_matches", "lock_status", "lock_text", "marker_env",
    "pip_command", "pip_env", "platform_tags", "probe", "read_lock", "redact_text", "redact_url", "requirements_text",
    "resolve", "run_pip", "write_lock",
]


class IndexUnreachable(ImagegenError):
    pass


class MissingWheel(UserInputError):
    pass


# --- probing extra indexes -------------------------------------------------------------------------

_probe_cache: dict[str, str | None] = {}
_probe_lock = threading.Lock()


def probe_timeout() -> float:
    return settings.INDEX_TIMEOUT.value()


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
    return set(settings.SKIP_UNREACHABLE_INDEXES.value())


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
    for ix, reason in zip(indexes, reasons, strict=True):
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
    setting = settings.PIP_FAST_DEPS.value()
    if setting is False or _fast_deps_broken.is_set():
        return False
    if setting is True:
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
        return ImagegenError(f"{where}disk full while resolving {label} (pip works under {paths.tmp_root()})",
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
        detail = "; ".join(causes[:4]) if causes else last_line(stderr)
        return UserInputError(f"{where}the requirements of {label} conflict for {target}: {detail}{note}")
    if "is not a supported wheel on this platform" in stderr:
        return MissingWheel(f"{where}{last_line(stderr)} (target {target})")
    return ImagegenError(f"{where}pip could not resolve {label} for {target}: {last_line(stderr)}{note}")




def _resolve_set(reqs: Sequence[str], req: LockRequest, indexes: list[Index], workdir: Path, label: str
                 ) -> list[tuple[_Dist, tuple[str, ...]]]:
    """Resolve one requirement set for the target; return [(dist, via)] of the target's closure."""
    env = req.marker_env()
    top: list[Requirement] = []
    for text in reqs:
        r = parse_requirement(text)
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
            sha = wheelhouse.sha256_file(Path(urllib.request.url2pathname(parts.path)))
        out_.append(LockedWheel(name=d.name, version=d.version, sha256=sha or "", filename=fname,
                                url=d.url, via=via))
    return out_


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
        if r.status == "updated" and r.path.read_text() == lock_text(r.lock):
            r.status = "unchanged"
        write_lock(r.lock, r.path)
    if fetch:  # CUDA kernel facts of the locked wheels, next to each lock (locks/<cell>.cuda.json)
        from . import gpu_archs

        for r in results.values():
            if r.lock is not None:
                gpu_archs.ensure_facts(r.lock, r.path)
    return list(results.values())


def _raise_first(failures: list[tuple[str, ImagegenError]]) -> None:
    cid, exc = failures[0]
    msg = exc.message if exc.message.startswith(cid) else f"{cid}: {exc.message}"
    more = f"; {len(failures) - 1} more cell(s) failed ({', '.join(c for c, _ in failures[1:])})" \
        if len(failures) > 1 else ""
    raise type(exc)(msg + more + "; no lock written", hint=exc.hint)
