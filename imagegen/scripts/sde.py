"""Build helper (runs inside a build stage, stdlib only): make what a step wrote depend on its inputs,
not on the clock, before the step's layer is taken.

    python3 sde.py ROOT [ROOT ...]

With SOURCE_DATE_EPOCH set (https://reproducible-builds.org/specs/source-date-epoch/; `imagegen build`
passes it as a build argument): every file, directory and symlink under each ROOT whose mtime is later
than SOURCE_DATE_EPOCH gets it (clamped, as BuildKit's `rewrite-timestamp` and Debian's dpkg-deb do:
older mtimes, a package's own, are kept); caches whose bytes record the clock or inode numbers are
removed (`CACHES`: ldconfig's aux-cache, Python's `__pycache__` of the build helpers themselves).
Without it: nothing (a plain `docker build` of a committed Dockerfile).

Symlinks are clamped themselves (`follow_symlinks=False`), never their targets. Mount points of other
filesystems under a ROOT are not entered (`/proc`, `/sys`, bind mounts). Prints one line:
`IMAGEGEN-SDE clamped=N removed=M epoch=E`.
"""

from __future__ import annotations

import os
import shutil
import sys

#: paths (relative to a ROOT) whose contents record the clock or the inode numbers of this machine
CACHES = ("var/cache/ldconfig/aux-cache", "opt/imagegen-build/__pycache__")


def clamp(root: str, epoch: int) -> int:
    """Clamp mtimes under `root` (itself included) to `epoch`; returns how many were changed. (Setting
    an entry's mtime never changes its directory's, so the order of the walk does not matter.)"""
    changed = 0
    dev = os.lstat(root).st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_dev == dev and st.st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                changed += 1
    if os.lstat(root).st_mtime > epoch:
        os.utime(root, (epoch, epoch), follow_symlinks=False)
        changed += 1
    return changed


def drop_timestamp_pycs(root: str) -> int:
    """Remove the timestamp-based .pyc files under `root` (PEP 552 flags 0: what the import system writes
    when a build step imports a module). They record their source's mtime, the clock's, and once the
    sources are clamped they are stale anyway: Python ignores them. Hash-based ones (imagegen's own
    compile step) are kept. Returns how many were removed."""
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(".pyc"):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    head = f.read(8)
            except OSError:
                continue
            if len(head) == 8 and int.from_bytes(head[4:8], "little") == 0:
                os.unlink(path)
                removed += 1
    return removed


def main(argv: list[str]) -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        print("IMAGEGEN-SDE skipped: SOURCE_DATE_EPOCH is not set")
        return 0
    try:
        epoch = int(value)
    except ValueError:
        print(f"sde.py: error: SOURCE_DATE_EPOCH={value!r} is not an integer", file=sys.stderr)
        return 2
    removed = 0
    changed = 0
    for root in argv:
        for rel in CACHES:
            path = os.path.join(root, rel)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                removed += 1
            elif os.path.lexists(path):
                os.unlink(path)
                removed += 1
        if os.path.lexists(root):
            removed += drop_timestamp_pycs(root)
            changed += clamp(root, epoch)
    print(f"IMAGEGEN-SDE clamped={changed} removed={removed} epoch={epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
