"""Where imagegen keeps things on the host: THE cache root and every path under it.

The root is ``$IMAGEGEN_CACHE``, or ``~/.cache/imagegen`` when the variable is unset *or empty*
(an empty value never means the working directory). It is shared by every command and matrix on
the machine and is content-addressed where it matters (wheels, gzip sizes), so sharing
it is safe. Nothing here creates a directory; callers ``mkdir`` what they write.

Layout (all under the root)::

    wheels/sha256/<hh>/<sha256>/<file>   the wheel cache (wheelhouse)
    wheels/locks/<sha256>.lock           per-file fetch serialisation (flock)
    tmp/run-<pid>-<id>/                  a run's temporary files (pip's TMPDIR too) [owned]
    debian/<mirror>/<suite>/InRelease    the last verified InRelease of a suite (debarchive)
    debian/<mirror>/<suite>/<component>/ Debian Contents indexes (compact, derived)
    debian/by-hash/SHA256/<sha256>       archive index files (Packages.xz, Contents), verified against InRelease
    debian/packages/<sha256>-v<n>.json.gz compact Packages index, by the Packages file's sha256
    debian/debs/<sha256>.json            library names a .deb ships, by the .deb's sha256
    sonames/<image id>.json              library names of a base image
    locks/<ref>.lock                     base bootstrap serialisation (flock)
    stamps/<cell>.json                   quick no-op-rebuild stamps
    test-records/<hex>.json              test records, by the image's config digest (testrecord)
    config-digests.json                  image ID -> config digest, for the containerd image store (engine)
    engine-leftovers.json                containers an engine that stopped answering still holds (engine)
    logs/<cell>.log                      full build logs
    reports/                             JUnit XML of builds' test runs
    imagegen-ctx-<pid>-<id>/             a build's context while it runs [owned]
    audit/gzip/<diff_id>                 gzip sizes of layers (audit)
    imagetest/                           image inventories (image tests)
    cuda-kernels/<sha256>.json           CUDA kernel facts of a wheel, by its sha256 (gpu_archs)
    builds/<hex>.json                    build records (provenance), by the image's config digest
    bench/coldstart.json                 this machine's cold-start measurements (coldstart)

Outside the root, in ``$IMAGEGEN_TMPDIR`` or else the system's temporary directory (``$TMPDIR``,
/tmp), for files that need not share the cache's filesystem::

    imagegen-base-<pid>-<id>/            a base bootstrap (rootfs tarball) while it runs [owned]
    imagegen-test-<pid>-<id>/            an image test's read-only mount while it runs [owned]

[owned]: a work directory held by its process's flock on ``<dir>/.lock``; the next process creating one
of the same kind removes those whose owner died, even by SIGKILL (``imagegen.flock.make_owned_dir``),
and so does ``imagegen cache prune``. :func:`work_dirs` lists the kinds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import settings

ENV = settings.CACHE.name


def cache_root() -> Path:
    """The cache root (not created): :data:`imagegen.settings.CACHE` (``IMAGEGEN_CACHE=""`` behaves like
    unset)."""
    return settings.CACHE.value()


def wheels_root() -> Path:
    return cache_root() / "wheels" / "sha256"


def wheel_flocks() -> Path:
    return cache_root() / "wheels" / "locks"


def tmp_root() -> Path:
    return cache_root() / "tmp"


def debian_dir(root: Path | None = None) -> Path:
    """Debian archive caches; ``root`` replaces the cache root (callers' ``cache_dir=`` option)."""
    return (root if root is not None else cache_root()) / "debian"


def debian_by_hash(root: Path | None = None) -> Path:
    """Verified archive index files, named by their sha256 (like the archive's by-hash/SHA256/)."""
    return debian_dir(root) / "by-hash" / "SHA256"


def debian_packages(root: Path | None = None) -> Path:
    """Compact Packages indexes, by the sha256 of the Packages file they came from."""
    return debian_dir(root) / "packages"


def debian_debs(root: Path | None = None) -> Path:
    """Facts read from .deb files (the library names they ship), by the .deb's sha256."""
    return debian_dir(root) / "debs"


def sonames_dir() -> Path:
    return cache_root() / "sonames"


def base_flocks() -> Path:
    return cache_root() / "locks"


def stamps_dir() -> Path:
    return cache_root() / "stamps"


def test_records_dir() -> Path:
    """Test records, one file per config digest (imagegen.testrecord)."""
    return cache_root() / "test-records"


def config_digest_index() -> Path:
    """Image ID -> config digest of images on a containerd-store engine, whose image ID is the
    manifest digest (engine.config_digest; flock on a ``.lock`` beside it while written)."""
    return cache_root() / "config-digests.json"


def engine_leftovers() -> Path:
    """Journal of containers left on an engine that stopped answering (engine.reap_leftovers)."""
    return cache_root() / "engine-leftovers.json"


def logs_dir() -> Path:
    return cache_root() / "logs"


def build_log(cell_id: str) -> Path:
    return logs_dir() / f"{cell_id}.log"


def reports_dir() -> Path:
    return cache_root() / "reports"


def audit_gzip_dir() -> Path:
    return cache_root() / "audit" / "gzip"


def imagetest_dir() -> Path:
    return cache_root() / "imagetest"


def cuda_kernels_dir() -> Path:
    """CUDA kernel facts of wheels, one JSON file per wheel sha256 (imagegen.gpu_archs)."""
    return cache_root() / "cuda-kernels"


def builds_dir() -> Path:
    """Build records, one JSON file per image config digest (imagegen.provenance)."""
    return cache_root() / "builds"


def coldstart_cache() -> Path:
    """This machine's cold-start measurements (imagegen.coldstart)."""
    return cache_root() / "bench" / "coldstart.json"


RUN_PREFIX = "run-"
CONTEXT_PREFIX = "imagegen-ctx-"
BASE_PREFIX = "imagegen-base-"
TEST_PREFIX = "imagegen-test-"


def tmp_parent() -> Path:
    """Where base bootstraps and image tests put their work directories: ``$IMAGEGEN_TMPDIR``, else
    the system's temporary directory (``$TMPDIR``, /tmp). Not created."""
    return settings.TMPDIR.value()


def work_dirs() -> list[tuple[Path, str]]:
    """Every kind of owned work directory: [(parent directory, name prefix)] (see the layout above)."""
    return [(tmp_root(), RUN_PREFIX), (cache_root(), CONTEXT_PREFIX), (tmp_parent(), BASE_PREFIX),
            (tmp_parent(), TEST_PREFIX)]


def write_json_atomic(path: Path, data, *, indent: int, sort_keys: bool = False, newline: bool = False) -> None:
    """Write `data` as JSON to `path` through a temporary file in the same directory and a rename, so a
    reader sees the old file or the new one, never a half-written one (directories created)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=indent, sort_keys=sort_keys)
        if newline:
            fh.write("\n")
    os.replace(tmp, path)
