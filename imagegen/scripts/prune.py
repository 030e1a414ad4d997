#!/usr/bin/env python3
"""Prune a virtual environment inside the builder stage. Standard library only.

Each rule removes one kind of thing and reports the bytes it saved. Rules that are off in
prune.json are measured anyway ("would save"), so the build log shows what they'd give.
Last, the bytecode step compiles what is left (compile_bytecode.py), in the same RUN as the
install, so no layer holds the environment both with and without .pyc files.
Also prepares GPU library links and the loader configuration (ld.so.conf.d) for the runtime.

Writes <stage>/etc/imagegen/prune-report.json and prints it on one line prefixed with
IMAGEGEN-PRUNE-REPORT so the build can show it (contract.py owns both names).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

try:  # in the builder, its siblings sit next to this script; on the host they are sibling modules
    from . import contract, elfmini
except ImportError:
    import contract  # type: ignore[no-redef]
    import elfmini  # type: ignore[no-redef]

ELF_MAGIC = elfmini.ELF_MAGIC


def tree_size(path: Path) -> int:
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def remove(path: Path) -> int:
    size = tree_size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return size


class Pruner:
    def __init__(self, cfg: dict, venv: Path):
        self.cfg = cfg
        self.venv = venv
        self.site = Path(cfg["site_packages"])
        self.rules = cfg["rules"]
        self.globs = cfg["globs"]
        self.protect = cfg.get("protect", [])
        self.stage = Path(contract.STAGE_DIR)  # main() sets the --stage directory
        self.report: dict[str, dict] = {}
        self.gpu: dict = {}

    # -- helpers ------------------------------------------------------------------------------
    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.site))
        except ValueError:
            return "venv:" + str(p.relative_to(self.venv))

    def protected(self, p: Path) -> bool:
        rel = self.rel(p)
        parts = rel.split("/")
        for pat in self.protect:
            if fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch(part, pat) for part in parts[:1]):
                return True
            # "*.libs/*": anything inside an auditwheel-repaired library dir, at any depth
            if pat.endswith("/*") and any(fnmatch.fnmatch(part, pat[:-2]) for part in parts[:-1]):
                return True
        return False

    def expand(self, pattern: str) -> list[Path]:
        if pattern.startswith("venv:"):
            return sorted(self.venv.glob(pattern[5:]))
        return sorted(self.site.glob(pattern))

    def apply(self, rule: str, paths: list[Path]) -> None:
        on = bool(self.rules.get(rule))
        saved = 0
        count = 0
        for p in paths:
            if not (p.exists() or p.is_symlink()) or self.protected(p):
                continue
            if on:
                saved += remove(p)
            else:
                saved += tree_size(p)
            count += 1
        entry = self.report.setdefault(rule, {"enabled": on, "bytes": 0, "paths": 0})
        entry["bytes"] += saved
        entry["paths"] += count

    def walk(self):
        for root, dirs, files in os.walk(self.venv):
            yield Path(root), dirs, files

    # -- rules --------------------------------------------------------------------------------
    def run(self) -> dict:
        for rule in sorted(self.globs):  # path rules, from imagegen/data/prune.yaml + the framework's data
            paths = [p for g in self.globs[rule] for p in self.expand(g)]
            self.apply(rule, paths)
        tests, headers, static, caches = [], [], [], []
        for root, dirs, files in self.walk():
            for d in list(dirs):
                p = root / d
                if d.endswith(".dist-info"):
                    dirs.remove(d)  # metadata and license trees stay whole
                elif d in ("tests", "test") and self.site in p.parents:
                    tests.append(p)
                    dirs.remove(d)
                elif d == "include" and self.site in p.parents and not self.protected(p):
                    headers.append(p)
                    dirs.remove(d)
                elif d == "__pycache__":
                    dirs.remove(d)  # the bytecode step replaces it
                elif d in (".cache", "pip-cache"):
                    caches.append(p)
                    dirs.remove(d)
            for f in files:
                p = root / f
                if f.endswith((".h", ".hpp", ".hh", ".hxx", ".cuh", ".inl")):
                    headers.append(p)
                elif f.endswith(".a") and not p.is_symlink():
                    static.append(p)
        self.apply("tests", tests)
        self.apply("headers", headers)
        self.apply("static_libs", static)
        self.apply("caches", caches)
        self.strip()
        # GPU links and loader configuration before the bytecode trace, whose loader path then gets
        # the directories the runtime registers: the trace sees the libraries the start loads, as
        # the runtime's loader finds them (links without those directories: FACTS.md trap 4)
        self.gpu = cuda_setup(self.cfg, self.site, self.stage)
        self.bytecode(libdirs=self.gpu.get("ld_so_conf", []))
        return self.report

    def bytecode(self, libdirs: list[str] | None = None) -> None:
        """Last, on what the other rules left (compile_bytecode.py says why, and how):
        `compile` (slim default): unchecked-hash .pyc for what `import <framework>` loads, traced
        here with the environment's own Python, in the venv and (from a copy of the runtime's
        sources, into the stage) in the runtime's standard library; `all`: every source;
        `keep` (full): timestamp-checked .pyc for every source, so an edited source is picked up;
        `drop`: none, and the report says what `compile` would have shipped in the venv.
        libdirs: directories the runtime registers with the loader (ld.so.conf.d: the NVIDIA wheels'),
        added to the trace's loader path after the closure's.
        A failed trace compiles everything and says so (report's trace_error, and on stderr)."""
        import compile_bytecode as bc

        mode = self.rules.get("bytecode") or "compile"
        spec = self.cfg.get("bytecode") or {}
        bc.remove_bytecode(self.venv)  # whatever the installer wrote, before pruning
        std = spec.get("stdlib")
        stdlib = (Path(std["src"]), std["ddir"], self.stage) if std and mode in ("compile", "all") else None
        if mode == "keep":
            res = {"scope": "all", "venv": bc.compile_tree(self.site, mode="timestamp"), "stdlib": None,
                   "trace_error": ""}
        elif mode == "all" or not spec.get("import"):
            res = {"scope": "all", "venv": bc.compile_tree(self.site), "stdlib": None, "trace_error": ""}
            if stdlib:
                res["stdlib"] = bc.compile_tree(stdlib[0], ddir=stdlib[1])
                bc.move_pycache(stdlib[0], stdlib[2] / stdlib[1].lstrip("/"))
        else:
            res = bc.compile_imported(self.site, spec.get("python") or str(self.venv / "bin" / "python"),
                                      spec["import"], libdirs=(spec.get("libdirs") or []) + list(libdirs or []),
                                      stdlib=stdlib, smoke=spec.get("smoke"))
            if res["trace_error"]:
                print(f"prune: WARNING: the bytecode trace failed ({res['trace_error']}); fell back to every "
                      "source (scope 'all') instead of what the start loads", file=sys.stderr, flush=True)
        if mode == "drop":
            bc.remove_bytecode(self.venv)
        venv = res["venv"]
        self.report["bytecode"] = {
            "enabled": mode == "drop", "mode": mode, "scope": res["scope"], "bytes": venv["bytes"],
            "paths": venv["files"], "invalidation_mode": venv["invalidation_mode"],
            "compile_errors": venv["errors"], "compile_seconds": venv["seconds"],
            "stdlib": res["stdlib"], "trace_error": res["trace_error"],
        }

    def strip(self) -> None:
        """strip --strip-unneeded every ELF file that still has symbols or debug info, in parallel
        (strip is single-threaded and torch's libraries take tens of seconds each)."""
        from concurrent.futures import ThreadPoolExecutor

        on = bool(self.rules.get("strip"))
        todo: list[Path] = []
        verify: set[Path] = set()  # patchelf's layout: strip a copy, keep it only if it loads the same
        skipped = 0
        spared: list[str] = []
        for root, _dirs, names in self.walk():
            for f in names:
                p = root / f
                if p.is_symlink() or not p.is_file() or not is_elf(p):
                    continue
                if self.protected(p):
                    skipped += 1
                    continue
                try:
                    elf = elfmini.read_file(str(p))
                except (OSError, ValueError):
                    continue
                # known breakage (auditwheel's *.libs and the modules whose RUNPATH points there): spared
                hazard = elfmini.strip_hazard(self.rel(p), elf.runpath + elf.rpath)
                if hazard:
                    skipped += 1
                    spared.append(f"{self.rel(p)}: {hazard}")
                    continue
                if _has_symbols(elf):
                    todo.append(p)
                    if elf.patchelf_layout():
                        verify.add(p)

        def one(p: Path) -> int:
            before = p.stat().st_size
            if not on:
                return symbol_bytes(p)
            mode = stat.S_IMODE(p.stat().st_mode)
            target = p.with_name(f".{p.name}.imagegen-strip") if p in verify else p
            if target != p:
                shutil.copy2(p, target)
            os.chmod(target, mode | stat.S_IWUSR)
            r = subprocess.run(["strip", "--strip-unneeded", "--preserve-dates", str(target)], capture_output=True,
                               text=True)
            os.chmod(target, mode)
            if r.returncode != 0:
                print(f"prune: strip failed on {self.rel(p)}: {r.stderr.strip()}", file=sys.stderr)
                if target != p:
                    target.unlink(missing_ok=True)
                return 0
            if target != p:
                why = elfmini.same_memory_image(elfmini.read_file(str(p)), elfmini.read_file(str(target)))
                if why:
                    target.unlink()
                    spared.append(f"{self.rel(p)}: rewritten by patchelf and {why} after strip; left as is")
                    return 0
                os.replace(target, p)
            return before - p.stat().st_size

        # biggest first, so the long ones start early
        todo.sort(key=lambda q: -q.stat().st_size)
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            saved = sum(pool.map(one, todo))
        self.report["strip"] = {"enabled": on, "bytes": saved, "paths": len(todo), "skipped_auditwheel": skipped,
                                "spared": spared[:20]}


# -- ELF (section headers only) --------------------------------------------------------------


def is_elf(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == ELF_MAGIC
    except OSError:
        return False


def _has_symbols(elf: "elfmini.ElfFile") -> bool:
    return any(n == ".symtab" or n.startswith(".debug_") for n in elf.sections)


def symbol_bytes(p: Path) -> int:
    """Bytes of .symtab, .strtab and .debug_* sections: what strip --strip-unneeded removes."""
    try:
        secs = elfmini.read_file(str(p)).sections
    except (OSError, ValueError):
        return 0
    return sum(size for n, (_t, _o, _a, size) in secs.items() if n in (".symtab", ".strtab") or n.startswith(".debug_"))


# -- GPU: unversioned links and loader configuration -----------------------------------------


def cuda_setup(cfg: dict, site: Path, stage: Path) -> dict:
    cuda = cfg.get("cuda")
    if not cuda:
        return {}
    present = sorted({str(p.parent) for g in cuda.get("loader_dirs", ["nvidia/*/lib"]) for p in site.glob(f"{g}/*.so*")})
    links = {}
    for name, spec in sorted(cuda["links"].items()):
        libdir = site / spec["dir"]
        candidates = sorted(libdir.glob(spec["target_glob"]), key=lambda q: (len(q.name), q.name))
        if not candidates:
            raise SystemExit(f"prune: {name}: no {spec['target_glob']} in {libdir} (is its NVIDIA wheel locked?)")
        link = libdir / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(candidates[0].name)
        links[name] = f"{spec['dir']}/{candidates[0].name}"
    conf = stage / cuda["ldconf"].lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("# NVIDIA runtime libraries from pip wheels (written by imagegen)\n" + "".join(f"{d}\n" for d in present))
    return {"links": links, "ld_so_conf": present}


def without_timings(obj):
    """`obj` (a JSON value) without the keys that hold wall-clock durations (`seconds`, `*_seconds`)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not (k == "seconds" or k.endswith("_seconds"))}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--venv", required=True, type=Path)
    ap.add_argument("--stage", required=True, type=Path, help="files for the runtime root, copied as-is")
    args = ap.parse_args()
    cfg = json.loads(args.config.read_text())
    contract.check_config(cfg, "prune")
    before = tree_size(args.venv)
    args.stage.mkdir(parents=True, exist_ok=True)
    pruner = Pruner(cfg, args.venv)
    pruner.stage = args.stage
    report = pruner.run()
    gpu = pruner.gpu
    after = tree_size(args.venv)
    result = {"cell": cfg["cell"], "venv_bytes_before": before, "venv_bytes_after": after, "rules": report,
              "gpu": gpu}
    out = args.stage / contract.PRUNE_REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    # the file in the image holds no wall times (a layer must depend on its inputs only); the log line does
    out.write_text(json.dumps(without_timings(result), indent=2, sort_keys=True) + "\n")
    print(contract.PRUNE_REPORT_MARK + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
