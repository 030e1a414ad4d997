"""Advisory file locks (``fcntl.flock``) that serialise processes on this machine: two fetches of
the same wheel, two bootstraps of the same base, a live run's temporary directory.

Not to be confused with lock *files* (``imagegen.lockfile``: pinned wheels with hashes): an flock
guards work in progress and holds no data. The lock is released when its file is closed (also when
the process dies), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import IO, Iterator


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

