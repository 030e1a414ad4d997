"""What GPUs an environment runs on, from the CUDA kernels of its locked wheels.

Facts per wheel are computed by `imagegen.cuda_kernels` from the wheel itself and cached by its
sha256 under `$IMAGEGEN_CACHE/cuda-kernels/`. For each lock, the facts of its wheels that carry CUDA
kernels are written next to it as `locks/<cell-id>.cuda.json` (generated; commit it), so `validate`
and `list` answer on a fresh clone without downloading gigabytes.

The answer for a cell is the set of compute capabilities (from `imagegen/data/gpus.yaml`) on which
every CUDA library the cell's image ships has a usable kernel path. A library ships an
architecture when a real share of its fat-binary containers holds it (`min_container_share`);
it then serves a GPU by CUDA's rules (SASS X.y on X.z, z >= y; PTX on anything newer; LTO-IR on
nothing; see `imagegen/scripts/fatbin.py`). The containers a library embeds in its data sections
(cuFFT's kernels: `cuda_kernels` module docstring) count too, as a second pool judged by the same
share on its own: the two pools are separate builds loaded by separate mechanisms (the runtime
registers `.nv_fatbin`; the library loads its embedded ones itself), and their sizes differ by
orders of magnitude (cuFFT 11.3: 1 container against 23,531), so a pooled share would let one
hide the other's real targets. Libraries the cell's slimming removes are left out, and
feature-only libraries (data: `feature_libraries`) are reported but do not narrow the answer.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .labels import CUDA_ARCHS
from .scripts import fatbin as fb

if TYPE_CHECKING:  # annotations only: at run time this module sits below lockfile and matrix (and runs
    from .lockfile import Lock  # without pydantic on the device machine: bench/gpu_archs_on_device.py)
    from .matrix import Cell
    from .schemas import KernelFacts, LibraryFacts

FORMAT = 2     # 2: embedded containers (embedded_*), kernel_containers, LTO-IR entries (lto_XX)
LABEL = CUDA_ARCHS


def gpu_data() -> dict:
    """imagegen/data/gpus.yaml (:func:`imagegen.compat.gpus`; compat is imported here, not at the top,
    so bench/gpu_archs_on_device.py imports this module where only the standard library is present)."""
    from . import compat

    return compat.gpus()


def known_ccs() -> list[int]:
    """Compute capabilities of NVIDIA's x86_64 GPUs (data), ascending: [35, 37, ..., 121]."""
    return sorted(fb.parse_arch(k) for k in gpu_data()["compute_capabilities"])


def sm(cc: int) -> str:
    return f"sm_{cc}"


parse_name = fb.parse_name      # 'sm_90a' -> ('sass', 90, 'a'); 'compute_70' -> ('ptx', 70, '')


# ---- facts of one library / wheel ----------------------------------------------------------------

def library_facts(lib, wheel: str = "") -> LibraryFacts:
    """JSON-able facts of one `cuda_kernels.LibraryKernels` (bytes are decimal counts).
    `.nv_fatbin`: fatbin_bytes, containers, kernel_containers (those holding SASS or PTX, the
    share's denominator), bytes / containers_by_arch per entry name; the containers embedded in
    other data sections: the same under embedded_*."""
    return {
        "path": lib.path,
        "wheel": wheel,
        "size": lib.size,
        "fatbin_bytes": lib.fatbin_bytes,
        "containers": len(lib.containers),
        "kernel_containers": lib.kernel_containers(),
        "embedded_bytes": lib.embedded_bytes,
        "embedded_containers": len(lib.embedded),
        "embedded_kernel_containers": lib.kernel_containers(embedded=True),
        "embedded_bytes_by_arch": lib.bytes_by_arch(embedded=True),
        "embedded_containers_by_arch": lib.containers_by_arch(embedded=True),
        "compressed_bytes": lib.compressed_bytes() if not lib.warning else 0,
        "bytes": lib.bytes_by_arch() if not lib.warning else {},
        "containers_by_arch": lib.containers_by_arch() if not lib.warning else {},
        # what the section keeps when pruned to one target (fatbin.select, per container)
        "kept_bytes": {sm(cc): lib.kept_bytes([cc]) for cc in known_ccs()} if not lib.warning else {},
        "warning": lib.warning,
    }


def _cache_dir() -> Path:
    from . import paths

    return paths.cuda_kernels_dir()


def wheel_facts(path: Path, sha256: str, name: str = "") -> list[dict]:
    """Facts of every CUDA library inside a wheel; cached by the wheel's sha256."""
    from . import cuda_kernels

    cached = _cache_dir() / f"{sha256}.json"
    if cached.exists():
        try:
            data = json.loads(cached.read_text())
            if data.get("format") == FORMAT:
                return data["libraries"]
        except (OSError, ValueError):
            pass
    libs = [library_facts(lib, name) for lib in cuda_kernels.scan_wheel(path)]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"format": FORMAT, "sha256": sha256, "libraries": libs}, sort_keys=True))
    os.replace(tmp, cached)
    return libs


def _binary(filename: str) -> bool:
    return not filename.endswith("-none-any.whl")


def facts_path(lock_path: Path) -> Path:
    return Path(lock_path).with_name(Path(lock_path).name.removesuffix(".txt") + ".cuda.json")


def lock_facts(lock: "Lock", wheel_paths: dict[str, Path]) -> KernelFacts | None:
    """Facts of the lock's wheels that ship CUDA kernels (None if none does). wheel_paths: sha -> file."""
    wheels = {}
    scanned = []
    for w in lock.wheels:
        if not _binary(w.filename) or w.sha256 not in wheel_paths:
            continue
        scanned.append(w.sha256)
        libs = wheel_facts(wheel_paths[w.sha256], w.sha256, w.pin)
        if libs:
            wheels[w.pin] = {"sha256": w.sha256, "libraries": libs}
    if not wheels:
        return None
    return {"format": FORMAT, "cell": lock.cell_id,
            "generated_by": "imagegen lock (imagegen/gpu_archs.py); do not edit",
            "scanned": sorted(scanned),
            "wheels": {k: wheels[k] for k in sorted(wheels)}}


def facts_current(lock: "Lock | set[str]", facts: dict | None) -> bool:
    """Do `facts` describe wheels of `lock` (a Lock, or the set of its wheels' sha256), by sha256?"""
    if not facts or facts.get("format") != FORMAT:
        return False
    shas = lock if isinstance(lock, set) else {w.sha256 for w in lock.wheels}
    have = {v["sha256"] for v in facts["wheels"].values()}
    return have <= shas


def lock_hashes(lock_path: Path) -> set[str]:
    """The sha256 of every wheel a lock file pins (its `--hash=sha256:` lines), without parsing it
    as a lock (keeps this module independent of imagegen.lock)."""
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", Path(lock_path).read_text()))


def write_facts(lock: "Lock", lock_path: Path, wheel_paths: dict[str, Path]) -> Path | None:
    """Write (or remove) `locks/<cell>.cuda.json` for `lock`. Returns the path written, or None."""
    facts = lock_facts(lock, wheel_paths)
    path = facts_path(lock_path)
    if facts is None:
        if path.exists():
            path.unlink()
        return None
    text = json.dumps(facts, indent=1, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def cached_wheel_paths(lock: "Lock") -> dict[str, Path]:
    """sha256 -> cached file, for the lock's binary wheels already in the wheel cache."""
    from . import wheelhouse

    out = {}
    for w in lock.wheels:
        if _binary(w.filename):
            p = wheelhouse.cached(w)
            if p is not None:
                out[w.sha256] = p
    return out


def ensure_facts(lock: "Lock", lock_path: Path, wheel_paths: dict[str, Path] | None = None) -> KernelFacts | None:
    """The lock's facts: the committed file when it matches the lock, else computed from the wheels
    (the given paths, or those in the cache) and written next to the lock. None when the binary
    wheels are neither described nor cached (a fresh clone before `imagegen lock`/`fetch`)."""
    facts = read_facts(lock_path)
    binaries = [w for w in lock.wheels if _binary(w.filename)]
    if facts is not None and facts_current(lock, facts) and _complete(lock, facts):
        return facts
    paths = wheel_paths if wheel_paths is not None else cached_wheel_paths(lock)
    if any(w.sha256 not in paths for w in binaries):
        return facts if facts is not None and facts_current(lock, facts) else None
    write_facts(lock, lock_path, paths)
    return read_facts(lock_path)


def _complete(lock: "Lock", facts: dict) -> bool:
    """Facts list which binary wheels were scanned (with or without kernels)."""
    scanned = set(facts.get("scanned", []))
    return all(w.sha256 in scanned for w in lock.wheels if _binary(w.filename))


def read_facts(lock_path: Path) -> KernelFacts | None:
    path = facts_path(lock_path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if data.get("format") == FORMAT else None


# ---- what a set of libraries runs on ----------------------------------------------------------------

def shipped(lib: dict) -> list[str]:
    """Entry names a library was built for: those in >= min_container_share of the containers
    holding SASS or PTX, in `.nv_fatbin` or (judged on its own) among the embedded containers."""
    share = float(gpu_data()["min_container_share"])
    pools = ((lib["kernel_containers"], lib["containers_by_arch"]),
             (lib["embedded_kernel_containers"], lib["embedded_containers_by_arch"]))
    return sorted({name for n, by in pools for name, k in by.items() if n and k >= share * n}, key=fb.name_key)


def serves(lib: dict, cc: int) -> bool:
    for name in shipped(lib):
        kind, arch, variant = parse_name(name)
        if kind == "sass" and fb.sass_serves(arch, variant, cc) or kind == "ptx" and fb.ptx_serves(arch, variant, cc):
            return True
    return False


def served(lib: dict) -> list[int]:
    return [cc for cc in known_ccs() if serves(lib, cc)]


def describe(lib_or_libs: dict | Iterable[dict]) -> str:
    """'SASS for sm_61, sm_70; no PTX' (over one library or the union of several)."""
    libs = [lib_or_libs] if isinstance(lib_or_libs, dict) else list(lib_or_libs)
    names = sorted({n for lib in libs for n in shipped(lib)}, key=fb.name_key)
    sass = [n for n in names if parse_name(n)[0] == "sass"]
    ptx = [n for n in names if parse_name(n)[0] == "ptx"]
    return (f"SASS for {', '.join(sass)}" if sass else "no SASS") + "; " + (
        f"PTX for {', '.join(ptx)}" if ptx else "no PTX")


@dataclass
class Coverage:
    """archs: compute capabilities every counted library serves; narrowing: library path -> the
    capabilities some other library serves but it does not; feature: feature-only libraries
    (not counted) -> what they serve; unreadable: libraries whose fat binary could not be read."""
    archs: list[int]
    narrowing: dict[str, list[int]] = field(default_factory=dict)
    feature: dict[str, list[int]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    libraries: int = 0

    @property
    def label(self) -> str:
        return ",".join(sm(c) for c in self.archs)

    def feature_gaps(self) -> dict[str, list[str]]:
        """{sm_XX the image runs on: ["<library>: <what it is>", ...]} for the feature libraries (gpus.yaml
        feature_libraries: loaded only by some operations) with no kernels there: those operations fail
        on that GPU ("no kernel image is available", PaddleOCR#15814 for flash-attention on an H100)."""
        globs = gpu_data().get("feature_libraries") or {}
        out: dict[str, list[str]] = {}
        for cc in self.archs:
            gaps = [f"{path.rsplit('/', 1)[-1]}: {next((d for g, d in globs.items() if _matches(path, [g])), '')}"
                    for path, srv in sorted(self.feature.items()) if cc not in srv]
            if gaps:
                out[sm(cc)] = gaps
        return out

    def as_dict(self) -> dict:
        return {"archs": [sm(c) for c in self.archs], "libraries": self.libraries,
                "narrowing": {k: [sm(c) for c in v] for k, v in self.narrowing.items()},
                "feature_libraries": {k: [sm(c) for c in v] for k, v in self.feature.items()},
                "feature_gaps": self.feature_gaps(),
                "unreadable": self.unreadable}


def _matches(path: str, globs: Iterable[str]) -> bool:
    """site-packages-relative globs, matched against relative or absolute (image) paths."""
    return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(path, "*/" + g) for g in globs)


def coverage(libs: Iterable[dict], needed: Iterable[str] = ()) -> Coverage:
    """What a set of libraries runs on. Feature libraries (gpus.yaml) are reported, not counted, unless
    `needed` (a cell's needs_kernels globs) names them."""
    feature_globs = gpu_data().get("feature_libraries") or {}
    needed = list(needed)
    counted, feature, bad = [], {}, {}
    for lib in libs:
        if lib.get("warning"):
            bad[lib["path"]] = lib["warning"]
        elif _matches(lib["path"], feature_globs) and not _matches(lib["path"], needed):
            feature[lib["path"]] = served(lib)
        elif lib["kernel_containers"] or lib["embedded_kernel_containers"]:
            counted.append(lib)
    sets = {lib["path"]: set(served(lib)) for lib in counted}
    archs = set.intersection(*sets.values()) if sets else set()
    union = set.union(*sets.values()) if sets else set()
    narrowing = {}
    for path, s in sets.items():
        lost = union - s
        if lost:
            narrowing[path] = sorted(lost)
    return Coverage(sorted(archs), narrowing, feature, bad, len(counted))


# ---- cells ----------------------------------------------------------------------------------------

def removed_globs(cell: "Cell") -> list[str]:
    """Globs (site-packages relative) of the libraries the cell's slimming removes."""
    from . import recipe

    return recipe.of(cell).removed_globs


def cell_libraries(cell: "Cell", facts: dict) -> list[dict]:
    """The CUDA libraries the cell's image ships (facts), after its slimming rules."""
    gone = removed_globs(cell)
    libs = []
    for wheel in facts["wheels"].values():
        for lib in wheel["libraries"]:
            if not _matches(lib["path"], gone):
                libs.append(lib)
    return libs


def cell_coverage(cell: "Cell", facts: dict | None) -> Coverage | None:
    if facts is None:
        return None
    return coverage(cell_libraries(cell, facts), cell.needs_kernels)


def label_value(cell: "Cell", cov: Coverage | None) -> str | None:
    """io.imagegen.cuda.archs: the targets when the cell names them (its kernels are pruned to
    them), else every known capability the image serves."""
    if cov is None:
        return None
    if cell.gpu_archs:
        return ",".join(cell.gpu_archs)
    return cov.label


def check_targets(cell: "Cell", facts: dict | None) -> str | None:
    """Why the cell's gpu_archs cannot be served (one line), or None. Judged per wheel, framework
    first: '<framework> <version> ships no kernels for sm_90 (SASS for ...; no PTX)'."""
    if not cell.gpu_archs or facts is None:
        return None
    libs = cell_libraries(cell, facts)
    feature_globs = gpu_data().get("feature_libraries") or {}
    by_wheel: dict[str, list[dict]] = {}
    needed = cell.needs_kernels
    for lib in libs:
        if lib.get("warning") or (_matches(lib["path"], feature_globs) and not _matches(lib["path"], needed)):
            continue
        by_wheel.setdefault(lib["wheel"], []).append(lib)
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    fw_req = canonicalize_name(Requirement(cell.requirements[0]).name) if cell.requirements else ""

    def dist(pin: str) -> str:
        return canonicalize_name(pin.partition("==")[0])

    def order(w: str) -> tuple:
        return (dist(w) != fw_req, w)

    for target in cell.gpu_archs:
        cc = fb.parse_arch(target)
        for wheel in sorted(by_wheel, key=order):
            missing = [lib for lib in by_wheel[wheel] if not serves(lib, cc)]
            if missing:
                name, _, ver = wheel.partition("==")
                who = f"{cell.framework} {cell.version}" if dist(wheel) == fw_req else f"{name} {ver}"
                where = "" if len(missing) == len(by_wheel[wheel]) else \
                    " in " + ", ".join(lib["path"].rsplit("/", 1)[-1] for lib in missing)
                return f"{who} ships no kernels for {sm(cc)}{where} ({describe(missing)})"
    return None


# ---- matrix-level answers (validate, list) ------------------------------------------------------------

def _lock_file(m, cell: "Cell") -> Path:
    return Path(m.path).resolve().parent / "locks" / f"{cell.id}.txt"


def _own_facts(m, cell: "Cell") -> KernelFacts | None:
    lp = _lock_file(m, cell)
    if cell.device != "gpu" or not lp.exists():
        return None
    facts = read_facts(lp)
    if facts is None:
        return None
    return facts if facts_current(lock_hashes(lp), facts) else None


def _lock_key(cell: "Cell") -> tuple:
    """What a cell's lock is resolved from (pipeline.lock_request: requirements, Python, the base's
    glibc, indexes; the builder tools are the same for every cell): two cells with one key get the same
    wheels."""
    glibc = cell.base_spec.glibc if cell.base_spec is not None else None
    return (tuple(cell.requirements), cell.python, glibc, tuple(cell.indexes))


def committed_facts(m, cell: "Cell") -> KernelFacts | None:
    """The committed facts for a cell's lock, if they describe that lock (no scanning, no network). A
    cell without a lock of its own (an arch-targeted twin just added with `include:`) gets the facts of
    a cell whose lock is resolved from the same inputs, so the same wheels: found by the lock's content,
    not by the tag's file name."""
    own = _own_facts(m, cell)
    if own is not None or cell.device != "gpu" or _lock_file(m, cell).exists():
        return own
    key = _lock_key(cell)
    for other in m.cells:
        if other is not cell and other.device == "gpu" and _lock_key(other) == key:
            facts = _own_facts(m, other)
            if facts is not None:
                return facts
    return None


def check_matrix(m) -> list[str]:
    """Raise UserInputError (one line) for the first active cell whose gpu_archs its kernels cannot
    serve. Returns notes (cells with gpu_archs whose facts are not committed yet)."""
    from .errors import UserInputError

    notes = []
    for cell in m.active:
        if cell.device != "gpu":
            continue
        facts = committed_facts(m, cell)
        if facts is not None and (why := check_readable(cell, facts)):
            raise UserInputError(f"{cell.origin}: {why}")
        if not cell.gpu_archs and not cell.needs_kernels:
            continue
        if facts is None:
            notes.append(f"{cell.ref}: no CUDA kernel facts next to its lock yet; gpu_archs and needs_kernels "
                         f"checked at `imagegen lock` (run it and commit locks/)")
            continue
        why = check_targets(cell, facts) or _check_needs(cell, facts)
        if why:
            raise UserInputError(f"{cell.origin}: {why}")
    return notes


def check_readable(cell: "Cell", facts: dict | None) -> str | None:
    """Why the cell's GPU verdict would leave a library out (one line naming it), or None: a library of
    its image whose fat binary could not be read, and that no `accept_unreadable` glob accepts. Fails
    closed: such a library is never dropped from the label and the checks silently."""
    if facts is None:
        return None
    accepted = cell.accept_unreadable
    bad = [lib for lib in cell_libraries(cell, facts) if lib.get("warning") and not _matches(lib["path"], accepted)]
    if not bad:
        return None
    first = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (f"{first['path']}{more}: its CUDA kernels could not be read ({first['warning']}), so the GPUs "
            f"{cell.ref} runs on cannot be judged with it; accept leaving it out with an override's "
            f"accept_unreadable: [{first['path']}]")


def _check_needs(cell: "Cell", facts: dict) -> str | None:
    """Why the libraries the cell needs cannot be served: a glob that names no CUDA library of its image,
    or no GPU on which every counted library, the needed ones included, has kernels."""
    if not cell.needs_kernels:
        return None
    libs = cell_libraries(cell, facts)
    every = [lib for w in (facts.get("wheels") or {}).values() for lib in w["libraries"]]
    for glob in cell.needs_kernels:
        if not any(_matches(lib["path"], [glob]) for lib in libs):
            removed = any(_matches(lib["path"], [glob]) for lib in every)
            return (f"needs_kernels '{glob}' names no CUDA library of {cell.ref}'s image"
                    + (" (its slimming rules remove it: turn that rule off for this cell)" if removed else ""))
    cov = coverage(libs, cell.needs_kernels)
    if not cov.archs:
        why = "; ".join(f"{p.rsplit('/', 1)[-1]}: {describe(lib)}" for lib in libs
                        for p in [lib["path"]] if _matches(p, cell.needs_kernels))
        return f"{cell.ref}: no GPU has kernels for every library it needs ({why})"
    return None


def cell_summary(m, cell: "Cell") -> dict | None:
    """For `list --json`: what the cell's image runs on, from the committed facts (None without)."""
    facts = committed_facts(m, cell)
    cov = cell_coverage(cell, facts)
    if cov is None:
        return None
    d = cov.as_dict()
    d["label"] = label_value(cell, cov)
    libs = cell_libraries(cell, facts)
    d["kernel_bytes"] = sum(lib["fatbin_bytes"] for lib in libs)
    d["embedded_kernel_bytes"] = sum(lib["embedded_bytes"] for lib in libs)
    return d


# ---- an image's report (audit) ---------------------------------------------------------------------

def image_report(libs) -> dict | None:
    """The audit's `cuda_kernels` section from the LibraryKernels of an image's files (or None when
    it has none): kernel bytes per architecture per library, what the image runs on, and what a
    narrower target (one GPU architecture) would keep and save (of `.nv_fatbin`: a prune leaves
    embedded containers alone). Bytes are decimal counts; `embedded_total` and each library's
    `embedded_bytes` count the containers embedded in data sections, apart from `total`."""
    libs = list(libs)
    if not libs:
        return None
    facts = [library_facts(lib) for lib in libs]
    cov = coverage(facts)
    total = sum(f["fatbin_bytes"] for f in facts)
    embedded = sum(f["embedded_bytes"] for f in facts)
    by_arch: dict[str, int] = {}
    for f in facts:
        for k, v in f["bytes"].items():
            by_arch[k] = by_arch.get(k, 0) + v
    readable = [f for f in facts if not f["warning"]]
    # one row per architecture some library was built for, plus the first one served only by PTX
    sass = {parse_name(n)[1] for f in readable for n in shipped(f) if parse_name(n)[0] == "sass"}
    rows_for = [cc for cc in cov.archs if cc in sass]
    ptx_only = [cc for cc in cov.archs if cc > max(sass, default=0)]
    rows_for += ptx_only[:1]
    narrower = []
    for cc in rows_for:
        kept = sum(f["kept_bytes"][sm(cc)] for f in readable)
        narrower.append({"target": sm(cc), "kept": kept,
                         "saves": sum(f["fatbin_bytes"] for f in readable) - kept})
    rows = [{"path": f["path"], "fatbin_bytes": f["fatbin_bytes"], "containers": f["containers"],
             "compressed_bytes": f["compressed_bytes"], "bytes": f["bytes"], "embedded_bytes": f["embedded_bytes"],
             "ships": shipped(f) if not f["warning"] else [],
             "serves": [sm(c) for c in served(f)] if not f["warning"] else [],
             "warning": f["warning"]} for f in sorted(facts, key=lambda f: -f["fatbin_bytes"] - f["embedded_bytes"])]
    return {"total": total, "embedded_total": embedded, "label": cov.label, "runs_on": cov.as_dict(),
            "by_arch": dict(sorted(by_arch.items(), key=lambda kv: fb.name_key(kv[0]))),
            "libraries": rows, "narrower_targets": narrower}
