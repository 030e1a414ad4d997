"""Advisory file locks (``fcntl.flock``) that serialise processes on this machine: two fetches of
the same wheel, two bootstraps of the same base, a live process's temporary directory (its owner's
flock tells the next process whether a leftover may be removed: :func:`make_owned_dir`, :func:`reap`).

Not to be confused with lock *files* (``imagegen.lockfile``: pinned wheels with hashes): an flock
guards work in progress and holds no data. The lock is released when its file is closed (also when
the process dies), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator

from .console import log, warn
from .units import format_size


def acquire(path: Path, *, blocking: bool = True, mode: str = "a") -> IO[str] | None:
    """Open ``path`` (creating its directory) and take an exclusive flock on it; close the returned
    file to release it. Without ``blocking``: None when another process holds it. OSError when the
    file cannot be created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, mode)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        fh.close()
        if blocking:
            raise
        return None
    return fh


@contextlib.contextmanager
def held(path: Path, *, mode: str = "a") -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block (waiting for other holders first)."""
    fh = acquire(path, mode=mode)
    assert fh is not None
    with fh:
        yield



# --- work directories owned by a live process -------------------------------------------------------
#
# A temporary directory (a build context, a base bootstrap, an image test's mount, a run's pip TMPDIR)
# holds an flock on ``<dir>/.lock`` for as long as its process lives. The kernel drops the flock when
# the process dies, even by SIGKILL (OOM killer, ``kill -9``, a closed VM), when no cleanup can run;
# so the next process that creates a directory of the same kind takes the free flock and removes the
# leftover. The flock, not the PID in the name, says who is alive: a PID is reused, and a cache shared
# by containers (PID namespaces) sees other namespaces' PIDs.

LOCK_NAME = ".lock"
STALE_AFTER = 86400.0  # seconds; see reap()
_STAGING = ".new-"  # a directory is created under this name, locked, then renamed: see make_owned_dir
_owned: dict[str, IO[str]] = {}  # path -> the open lock file holding it


def make_owned_dir(parent: Path, prefix: str, *, remove: Callable[[Path], None] | None = None) -> Path:
    """Create ``parent/<prefix><pid>-<random>/`` (mode 0700, ``parent`` created), owned by this process
    until :func:`remove_owned_dir` (or the process's death). First reaps ``parent/<prefix>*`` left by
    processes that are gone (:func:`reap`, with ``remove`` as the remover).

    The directory is made under a name that does not match ``prefix``, locked, and only then renamed
    into place, so a reaper never sees a directory of this kind that a live process has not locked
    yet. Raises OSError when the directory cannot be created (disk full, permissions)."""
    parent.mkdir(parents=True, exist_ok=True)
    reap(parent, prefix, remove=remove)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{prefix}", dir=parent))
    try:
        fh = open(staging / LOCK_NAME, "w")
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f"{os.getpid()}\n")  # for humans only; the flock is what counts
        fh.flush()
        final = parent / f"{prefix}{os.getpid()}-{staging.name[len(_STAGING) + len(prefix):]}"
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _owned[str(final)] = fh
    return final


def remove_owned_dir(path: Path, *, remove: Callable[[Path], None] | None = None) -> None:
    """Remove a directory made by :func:`make_owned_dir` (best effort, see :func:`remove_tree`) and
    release its flock. A directory removed already (e.g. by an interrupt's cleanup) is fine."""
    (remove or remove_tree)(Path(path))
    fh = _owned.pop(str(path), None)
    if fh is not None:
        fh.close()


def holder_fds(path: Path) -> tuple[int, ...]:
    """The descriptor holding an owned directory's flock, for ``subprocess.Popen(pass_fds=...)``: a
    child that works in the directory and may outlive this process (its own session) then keeps it
    owned until it exits too. () when ``path`` is not a directory this process owns."""
    fh = _owned.get(str(path))
    return (fh.fileno(),) if fh is not None and not fh.closed else ()


@contextlib.contextmanager
def owned_dir(parent: Path, prefix: str, *, remove: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """:func:`make_owned_dir` for the block, removed on exit (also on Ctrl-C and errors)."""
    d = make_owned_dir(parent, prefix, remove=remove)
    try:
        yield d
    finally:
        remove_owned_dir(d, remove=remove)


def reap(parent: Path, prefix: str, *, remove: Callable[[Path], None] | None = None,
         stale_after: float = STALE_AFTER, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove the directories ``parent/<prefix>*`` (and their staging names) whose owner is gone, and
    log one line on stderr for each, with the bytes it freed. Returns [(path, bytes freed)].

    Owner gone = the flock on ``<dir>/.lock`` can be taken (it is held while the removal runs, so two
    reapers never race). A directory without a lock file was made by an imagegen before this
    mechanism, or is a staging directory whose creator was killed between ``mkdir`` and ``flock``:
    nothing says whether its owner lives, so it is removed only when neither it nor anything directly
    in it changed for ``stale_after`` seconds (a day: far longer than any live build goes without
    writing there, far shorter than leaking GBs for good). A directory another user owns, a symlink,
    or one whose lock file cannot be opened is left alone. Never raises for a directory it cannot
    remove (best effort; ``remove`` defaults to :func:`remove_tree`). ``dry_run``: remove and log
    nothing, only return what would be removed."""
    reaped: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return reaped
    for e in entries:
        staging = e.name.startswith(_STAGING + prefix)
        if not (staging or e.name.startswith(prefix)) or str(Path(e.path)) in _owned:
            continue
        try:
            st = os.lstat(e.path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        path = Path(e.path)
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        except OSError:
            continue
        if fd is None or staging:
            if fd is not None:  # a staging dir: its creator is past flock only microseconds later
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
            newest = _newest_mtime(path)
            if newest is None or time.time() - newest < stale_after:  # None: gone (another reaper)
                if fd is not None:
                    os.close(fd)
                continue
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # a live process holds it
                continue
        try:
            freed, total = tree_size(path)
            if dry_run:
                reaped.append((path, freed))
                continue
            (remove or remove_tree)(path)
        finally:
            if fd is not None:
                os.close(fd)
        if path.exists():
            log(f"could not remove {path} (left by an imagegen process that is gone): remove it by hand")
            continue
        idle = f"unchanged for {(time.time() - st.st_mtime) / 3600:.0f} h"
        why = (f"unfinished, {idle}" if staging else "its imagegen process is gone" if fd is not None
               else f"no owner lock, {idle}")
        linked = f", {format_size(total - freed)} more hard-linked elsewhere (kept)" if total > freed else ""
        log(f"reaped {path}: {format_size(freed)} freed{linked} ({why})")
        reaped.append((path, freed))
    return reaped


def _newest_mtime(path: Path) -> float | None:
    """The newest mtime of ``path`` and its direct entries (seconds since the epoch); None if it is gone."""
    try:
        newest = os.lstat(path).st_mtime
    except OSError:
        return None
    with contextlib.suppress(OSError):
        for e in os.scandir(path):
            with contextlib.suppress(OSError):
                newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
    return newest


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes that removing ``path`` frees, bytes of all its files): file sizes, each inode once; the
    first leaves out inodes with links outside the tree (a build context's wheels are hard links
    into the wheel cache and free nothing). Does not follow symlinks."""
    seen: dict[tuple[int, int], list[int]] = {}
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    seen[key][0] += 1
                else:
                    seen[key] = [1, st.st_nlink, st.st_size]
    return (sum(size for links, nlink, size in seen.values() if links >= nlink),
            sum(size for _, _, size in seen.values()))


def remove_tree(path: Path) -> None:
    """Remove ``path`` best effort: never a tree with something mounted under it (a warning instead),
    read-only directories (a rootfs) made writable and retried, errors otherwise ignored."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    mounted = mounts_under(path)
    if mounted:
        warn(f"not removing {path}: still mounted: {', '.join(mounted)}")
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, d), 0o700, follow_symlinks=False)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def mounts_under(path: Path) -> list[str]:
    """Mount points strictly under ``path`` (from /proc/self/mountinfo; [] where it is unreadable)."""
    prefix = str(Path(path).resolve()).rstrip("/") + "/"
    out = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix):
                out.append(mp)
    return out
