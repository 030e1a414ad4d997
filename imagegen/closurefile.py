"""The committed ELF closure of a cell: ``locks/<cell id>.closure.json``, beside its lock.

The closure (which Debian packages the runtime base needs for the environment's NEEDED sonames,
:mod:`imagegen.closure`) is resolved once, like the CUDA kernel facts, and committed. A build of a
cell whose inputs did not change reads the file and needs no Debian index at all: a mirror caught
mid-sync, a partial mirror without ``Contents`` files or an air-gapped one cannot stop it (issue 17).

What the resolution depended on is the file's *inputs*: the lock file's bytes (sha256), the runtime
base's role reference (its tag is a digest of the role's package list, suite, mirror and snapshot,
:meth:`imagegen.compat.BaseSpec.role_ref`), the suite, mirror and architecture, the host-provided
sonames (CUDA data) and the cell's ignore list. A file whose inputs differ is *stale* and the next
build resolves again (and rewrites it: commit it). One more check is made against the real base at
build time: every soname the file counted as provided by the base must still be in it
(:func:`imagegen.bases.role_sonames`, cached by image ID), else the closure is resolved again.

File shape (JSON, sorted keys, no clock time)::

    {"format": 1, "cell": "<ref>", "key": "sha256:<hex>", "inputs": {...},
     "closure": <imagegen.closure.Closure.to_dict()>}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

FORMAT = 1
SUFFIX = ".closure.json"


@dataclasses.dataclass(frozen=True)
class ClosureInputs:
    """Everything a closure resolution depends on, but the archive's state."""

    lock_sha256: str  # hex sha256 of the cell's lock file bytes
    runtime_base: str  # the runtime role's reference (a digest of its inputs for bootstrapped bases)
    suite: str
    mirror: str
    arch: str
    host_provided: tuple[str, ...]  # sorted
    ignore: tuple[str, ...]  # sorted

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "host_provided": list(self.host_provided), "ignore": list(self.ignore)}

    @property
    def key(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of these inputs and the file format."""
        blob = json.dumps({"format": FORMAT, **self.to_dict()}, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CommittedClosure:
    """A committed closure file whose inputs match the cell's."""

    path: Path
    packages: tuple[str, ...]  # what sysroot.py installs on the runtime base
    base_sonames: frozenset[str]  # sonames the resolution found in the runtime base


def path_for(lock_path: Path) -> Path:
    """``locks/<cell id>.closure.json`` for ``locks/<cell id>.txt``."""
    return lock_path.with_name(lock_path.name.removesuffix(".txt") + SUFFIX)


def lock_sha256(lock_path: Path) -> str:
    return hashlib.sha256(lock_path.read_bytes()).hexdigest()


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def status(path: Path, inputs: ClosureInputs) -> str:
    """``up-to-date``, ``stale`` (written for other inputs) or ``missing`` (absent or unreadable)."""
    data = _read(path)
    if data is None:
        return "missing"
    return "up-to-date" if data.get("key") == inputs.key else "stale"


def read_current(path: Path, inputs: ClosureInputs) -> CommittedClosure | None:
    """The committed closure when its inputs are ``inputs``; None when missing or stale. No network."""
    data = _read(path)
    if data is None or data.get("key") != inputs.key:
        return None
    clos = data.get("closure") or {}
    if clos.get("unresolved"):
        return None
    base = frozenset(name for name, by in (clos.get("satisfied") or {}).items() if by == "base")
    return CommittedClosure(path=path, packages=tuple(clos.get("packages") or ()), base_sonames=base)


def write(path: Path, cell_ref: str, inputs: ClosureInputs, closure_dict: dict) -> None:
    """Write the file atomically (a reader never sees half of it)."""
    data = {"format": FORMAT, "cell": cell_ref, "key": inputs.key, "inputs": inputs.to_dict(), "closure": closure_dict}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
