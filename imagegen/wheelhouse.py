"""The content-addressed wheel cache and build-context staging.

Layout: ``$IMAGEGEN_CACHE/wheels/sha256/<hh>/<sha256>/<filename>`` (default cache ``~/.cache/imagegen``).
A file appears there only by an atomic rename after its sha256 was checked, so an interrupted or
failed download never leaves a partial or wrong file in the cache; each distinct wheel is downloaded
once per machine, whatever the number of cells or matrices using it. Cached files are read-only;
a stamp next to each records (size, mtime, inode) when it was last verified, so a changed file is
hashed again before it is used.

Downloads use the host's pip (``pip download --no-deps`` of the locked URL), so the host's index,
CA bundle, proxy and credentials (pip.conf, netrc, keyring) apply, and nothing of them is copied
anywhere: the build context gets only wheel files and a ``requirements.lock`` of pins and hashes.
Local sources (``file://``: find-links directories, local indexes) are copied directly. A URL that
had to be redacted in the lock (credentials) is fetched by ``name==version`` plus its hash through
the configured indexes instead.

Temporary files live under ``$IMAGEGEN_CACHE/tmp/run-<pid>-<id>/`` (pip's TMPDIR too), on the cache's
filesystem; a run's directory is removed when it ends, and directories of dead runs at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Iterator

from . import flock, paths
from .console import log
from .errors import ImagegenError, UserInputError
from .hostpip import host_sources, last_line, pip_env, run_pip, target_args, terminate_children
from .lockfile import Index, Lock, LockedWheel, LockRequest, requirements_text
from .paths import cache_root, wheels_root
from .redact import is_redacted, redact_text, redact_url
from .units import format_size


class HashMismatch(ImagegenError):
    pass


class DiskFull(ImagegenError):
    pass


class DownloadFailed(ImagegenError):
    pass


# --- cache layout ------------------------------------------------------------------------------


def cas_path(sha256: str, filename: str) -> Path:
    return wheels_root() / sha256[:2] / sha256 / filename


def _stamp(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached(w: LockedWheel, *, verify: bool = True) -> Path | None:
    """The cache's file for ``w`` if present (and, with ``verify``, still holding its sha256).

    A file that changed since it was verified is hashed again; a wrong one is removed."""
    path = cas_path(w.sha256, w.filename)
    try:
        key = _stat_key(path)
    except FileNotFoundError:
        return None
    if not verify:
        return path
    stamp = _stamp(path)
    try:
        if stamp.read_text() == key:
            return path
    except OSError:
        pass
    got = sha256_file(path)
    if got != w.sha256:
        log(f"warning: cached {w.filename} no longer matches its sha256 (got {got}); removing it")
        with contextlib.suppress(OSError):
            path.unlink()
            stamp.unlink()
        return None
    _write_stamp(path)
    return path


def evict_corrupt(lock: Lock) -> list[str]:
    """Hash every cached wheel of ``lock`` again, ignoring the verification stamps, and remove
    those whose bytes no longer match their sha256 (bit rot, a disk fault, a hand edit). Returns
    their file names. Costs one read of the lock's wheels (seconds per GB)."""
    bad = []
    for w in lock.all_wheels():
        if not w.sha256:
            continue
        path = cas_path(w.sha256, w.filename)
        try:
            got = sha256_file(path)
        except FileNotFoundError:
            continue
        if got != w.sha256:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                _stamp(path).unlink()
            bad.append(w.filename)
    return bad


def _write_stamp(path: Path) -> None:
    with contextlib.suppress(OSError):
        _stamp(path).write_text(_stat_key(path))


def cached_size(w: LockedWheel) -> int:
    try:
        return cas_path(w.sha256, w.filename).stat().st_size
    except OSError:
        return 0


# --- per-run temporary directory -----------------------------------------------------------------


@contextlib.contextmanager
def run_dir() -> Iterator[Path]:
    """A private temporary directory on the cache's filesystem, removed on exit (also on Ctrl-C);
    creating it reaps those of runs that died (``flock.make_owned_dir``)."""
    tmp_root = paths.tmp_root()
    try:
        d = flock.make_owned_dir(tmp_root, paths.RUN_PREFIX)
    except OSError as exc:
        raise _os_error(exc, f"cannot create a temporary directory under {tmp_root}") from None
    try:
        yield d
    finally:
        flock.remove_owned_dir(d)


@contextlib.contextmanager
def _one_fetch_at_a_time(sha256: str) -> Iterator[None]:
    """Serialises two processes fetching the same file (the second then finds it cached): an flock."""
    d = paths.wheel_flocks()
    try:
        fh = flock.acquire(d / f"{sha256}.lock")
    except OSError as exc:
        raise _os_error(exc, f"cannot create a lock file under {d}") from None
    assert fh is not None
    with fh:
        yield


def _os_error(exc: OSError, what: str) -> ImagegenError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"disk full: {what} (cache {cache_root()})",
                        hint="free space, or point IMAGEGEN_CACHE at a larger disk")
    return ImagegenError(f"{what}: {exc.strerror or exc}")


# --- fetching ------------------------------------------------------------------------------------


class _Target:
    """What fetching needs to know about where a wheel comes from and what it is for."""

    def __init__(self, python_version: str, abi: str, platforms: list[str], indexes: Iterable[Index]):
        self.args = target_args(python_version, abi, platforms)
        self.indexes = [ix for ix in indexes]

    @classmethod
    def of_lock(cls, lock: Lock) -> "_Target":
        return cls(lock.python_version, lock.abi, lock.platforms,
                   [ix for ix in lock.indexes if ix.name not in lock.skipped_indexes])

    def index_args(self) -> list[str]:
        args: list[str] = []
        for ix in self.indexes:
            if not is_redacted(ix.url):
                args += ["--extra-index-url" if ix.kind == "index" else "--find-links", ix.url]
        return args

    def source_label(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            return f"local file {urllib.request.url2pathname(parts.path)}"
        for ix in self.indexes:
            ip = urllib.parse.urlsplit(ix.url)
            if (ip.scheme, ip.hostname) == (parts.scheme, parts.hostname):
                return f"{ix.kind} {ix.name!r} ({redact_url(ix.url)})"
        return f"{parts.scheme}://{parts.hostname} (host pip configuration: {host_sources()})"


def _local_source(url: str) -> Path | None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file":
        return None
    path = Path(urllib.request.url2pathname(parts.path))
    return path if path.is_file() else None


def _copy_hashing(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for chunk in iter(lambda: fi.read(1 << 20), b""):
            h.update(chunk)
            fo.write(chunk)
    return h.hexdigest()


def _pip_download(w: LockedWheel, target: _Target, dest: Path, group: set) -> Path:
    """Download ``w`` with the host's pip into ``dest`` (empty dir); return the file."""
    args = ["download", "--no-deps", "--quiet", "--no-cache-dir", "--progress-bar", "off", "-d", str(dest),
            *target.args]
    if w.url.startswith(("http://", "https://")) and not is_redacted(w.url):
        args += [f"{w.name} @ {w.url}"]
    else:
        # No usable URL (credentials were redacted, or a local file of another machine): find the same
        # file by name, version and hash through the configured indexes.
        reqfile = dest.parent / f"{dest.name}.req"
        reqfile.write_text(f"{w.pin} --hash=sha256:{w.sha256}\n" if w.sha256 else f"{w.pin}\n")
        args += [*target.index_args(), "-r", str(reqfile)]
    proc = run_pip(args, env=pip_env(dest.parent), group=group)
    files = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not files:
        text = proc.stderr + proc.stdout
        if "No space left on device" in text or "[Errno 28]" in text:
            raise DiskFull(f"disk full while downloading {w.pin} (cache {cache_root()})",
                           hint="free space, or point IMAGEGEN_CACHE at a larger disk")
        raise DownloadFailed(f"download of {w.pin} ({w.filename}) failed from {target.source_label(w.url)}: "
                             f"{last_line(text)}")
    return files[0]


def _fetch_one(w: LockedWheel, target: _Target, work: Path, group: set) -> tuple[str, Path, int]:
    """Put ``w`` in the cache. Returns (sha256, cached path, bytes downloaded or copied; 0 if cached)."""
    if w.sha256:
        hit = cached(w)
        if hit:
            return w.sha256, hit, 0
    with contextlib.ExitStack() as stack:
        if w.sha256:
            stack.enter_context(_one_fetch_at_a_time(w.sha256))
            hit = cached(w)
            if hit:
                return w.sha256, hit, 0
        tmp = work / uuid.uuid4().hex[:12]
        try:
            tmp.mkdir(parents=True)
            src = _local_source(w.url)
            if src is not None:
                fetched = tmp / w.filename
                got = _copy_hashing(src, fetched)
            else:
                fetched = _pip_download(w, target, tmp, group)
                got = sha256_file(fetched)
            if fetched.name != w.filename:
                raise DownloadFailed(f"download of {w.pin} gave {fetched.name}, expected {w.filename}")
            if w.sha256 and got != w.sha256:
                raise HashMismatch(f"hash mismatch for {w.pin} ({w.filename}) from {target.source_label(w.url)}: "
                                   f"expected sha256 {w.sha256}, got {got}; the file was discarded")
            dest = cas_path(got, w.filename)
            dest.parent.mkdir(parents=True, exist_ok=True)
            size = fetched.stat().st_size
            os.chmod(fetched, 0o444)
            os.replace(fetched, dest)
            _write_stamp(dest)
            return got, dest, size
        except OSError as exc:
            raise _os_error(exc, f"cannot store {w.filename}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                (tmp.parent / f"{tmp.name}.req").unlink()


def _fetch_all(items: list[tuple[LockedWheel, _Target]], jobs: int) -> dict[str, tuple[str, Path]]:
    """Fetch in parallel. Returns {key: (sha256, path)} with key = sha256, or URL for hash-less items."""
    results: dict[str, tuple[str, Path]] = {}
    if not items:
        return results
    started = time.monotonic()
    downloaded = 0
    fetched = 0
    group: set = set()  # this call's pip processes: a failure stops its siblings, not other callers' pips
    with run_dir() as work, ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items)))) as pool:
        futures = {pool.submit(_fetch_one, w, t, work, group): w for w, t in items}
        try:
            for fut in as_completed(futures):
                w = futures[fut]
                try:
                    sha, path, size = fut.result()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    terminate_children(group)
                    raise
                results[w.sha256 or w.url] = (sha, path)
                if size:
                    fetched += 1
                    downloaded += size
                    log(f"  fetched {w.filename} ({format_size(size)})")
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            terminate_children()
            raise
    if fetched:
        secs = time.monotonic() - started
        log(f"fetched {fetched} wheel(s), {format_size(downloaded)} in {secs:.1f}s"
            f"{f' ({format_size(downloaded / secs)}/s)' if secs > 0 else ''}; {len(items) - fetched} already cached")
    return results


def fetch_many(locks: Iterable[Lock], jobs: int = 4) -> dict[str, Path]:
    """Fetch every wheel of several locks (tools included), each distinct file once. {sha256: path}."""
    seen: dict[str, tuple[LockedWheel, _Target]] = {}
    for lk in locks:
        target = _Target.of_lock(lk)
        for w in lk.all_wheels():
            if not w.sha256:
                raise UserInputError(f"{lk.cell_id}: {w.pin} has no sha256 in its lock; regenerate it")
            seen.setdefault(w.sha256, (w, target))
    res = _fetch_all(list(seen.values()), jobs)
    return {sha: path for sha, (_, path) in res.items()}


def fetch(lock: Lock, jobs: int = 4) -> list[Path]:
    """Fetch the lock's wheels (tools too) into the cache; return the paths of the environment's wheels
    (``lock.wheels`` order, tools excluded), e.g. for the ELF closure."""
    paths = fetch_many([lock], jobs)
    return [paths[w.sha256] for w in lock.wheels]


def hash_unhashed(wheels: Iterable[LockedWheel], req: LockRequest, indexes: Iterable[Index]) -> dict[str, str]:
    """Download wheels whose source gave no sha256 into the cache and return {url: sha256}."""
    target = _Target(req.python_version, req.abi, req.platforms, indexes)
    items = [(w, target) for w in wheels]
    res = _fetch_all(items, 4)
    return {w.url: res[w.url][0] for w, _ in items}


# --- staging into a build context ----------------------------------------------------------------


def stage(lock: Lock, context_dir: Path, *, jobs: int = 4) -> Path:
    """Make ``context_dir/wheels/`` hold exactly the lock's wheels (hard links into the cache, copies
    across filesystems) plus ``requirements.lock`` (pins + hashes of the environment) and, when the lock
    has builder tools, ``tools.lock``. Missing wheels are fetched first; cached ones are re-verified if
    they changed. Then, in the Dockerfile::

        COPY wheels/ /tmp/wheels/
        RUN pip install --no-index --no-deps --require-hashes --find-links /tmp/wheels \\
                -r /tmp/wheels/requirements.lock

    Returns the wheels directory."""
    context_dir = Path(context_dir)
    paths = fetch_many([lock], jobs)
    by_name: dict[str, str] = {}
    for w in lock.all_wheels():
        if by_name.setdefault(w.filename, w.sha256) != w.sha256:
            raise UserInputError(f"{lock.cell_id}: two different files are both named {w.filename}")
    final = context_dir / "wheels"
    new = context_dir / f".wheels.{os.getpid()}.tmp"
    try:
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        for w in lock.all_wheels():
            src, dst = paths[w.sha256], new / w.filename
            if dst.exists():
                continue
            try:
                os.link(src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                    raise
                shutil.copyfile(src, dst)
        (new / "requirements.lock").write_text(requirements_text(lock.wheels))
        if lock.tools:
            (new / "tools.lock").write_text(requirements_text(lock.tools))
        old = context_dir / f".wheels.{os.getpid()}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(new, ignore_errors=True)
        raise _os_error(exc, f"cannot stage wheels into {final}") from None
    return final


# --- cache maintenance ---------------------------------------------------------------------------


def cache_entries() -> Iterator[tuple[str, Path]]:
    root = wheels_root()
    if not root.is_dir():
        return
    for hh in sorted(root.iterdir()):
        for d in sorted(hh.iterdir()) if hh.is_dir() else ():
            for f in sorted(d.iterdir()):
                if f.name.endswith(".whl"):
                    yield d.name, f


def prune(keep: Iterable[Lock], *, dry_run: bool = False) -> tuple[int, int]:
    """Remove cached wheels no lock in ``keep`` references. Returns (files, bytes) removed."""
    wanted = {w.sha256 for lk in keep for w in lk.all_wheels()}
    files = size = 0
    for sha, f in list(cache_entries()):
        if sha in wanted:
            continue
        files += 1
        size += f.stat().st_size
        if not dry_run:
            shutil.rmtree(f.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                (paths.wheel_flocks() / f"{sha}.lock").unlink()
    return files, size


__all__ = [
    "DiskFull", "DownloadFailed", "HashMismatch", "cache_root", "cached", "cached_size", "cas_path", "fetch",
    "fetch_many", "hash_unhashed", "prune", "redact_text", "run_dir",
    "sha256_file", "stage", "wheels_root",
]
