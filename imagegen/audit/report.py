"""From a scanned image to the audit report: a plain JSON-able dict (the `--json` output), which
the terminal view, the HTML page, the comparison and the gates all read."""

from __future__ import annotations

import heapq
import unicodedata
from collections import defaultdict
from dataclasses import dataclass

from .. import coldstart
from ..labels import LABEL_CELL
from ..savestream.fsview import SymlinkLoop, View
from ..savestream.layers import ImageScan, Rec
from ..scripts.elfmini import strip_hazard
from .categories import CATEGORIES, category_of, group_of, rule_for_file
from .packages import UNOWNED, Ownership
from .schema import AuditReport, Category, Layer, Waste

SCHEMA = "imagegen.audit/1"

NOTE_GZIP = ("compressed = bytes of a gzip -6 stream of the layer tar, the format and level `docker push` "
             "uploads (computed, not estimated)")


def display_path(path: str) -> str:
    """A path as one printable line: non-UTF-8 bytes as \\xNN, control characters as \\n, \\t, \\xNN."""
    if path.isprintable() and path.isascii():
        return path
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _odd(path: str) -> bool:
    if path.isascii() and path.isprintable():
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return not path.isprintable()


@dataclass
class Analysis:
    scan: ImageScan
    view: View
    own: Ownership
    report: AuditReport

    def file_rows(self):
        """(rec, category, package) per visible regular file."""
        owner = self.own.owner
        for r in self.view.files():
            yield r, category_of(r.path), owner.get(r.path, UNOWNED)


def _created_by(h: dict) -> str:
    text = (h.get("created_by") or h.get("comment") or "").strip()
    for prefix in ("/bin/sh -c #(nop) ", "/bin/sh -c "):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
            if prefix.endswith("-c "):
                text = "RUN " + text
            break
    return " ".join(text.split())


class _Tally:
    """One pass over the visible files (:meth:`add` per file): the sums every section of the report is
    built from. Top-N lists are min-heaps of (bytes, path)."""

    def __init__(self, owner: dict[str, str], top: int):
        self.owner, self.top = owner, top
        self.cat_bytes: dict[str, int] = defaultdict(int)
        self.cat_files: dict[str, int] = defaultdict(int)
        self.rule_bytes: dict[str, int] = defaultdict(int)
        self.rule_files: dict[str, int] = defaultdict(int)
        self.layer_visible: dict[int, int] = defaultdict(int)
        self.layer_files: dict[int, int] = defaultdict(int)
        self.dir_bytes: dict[str, int] = defaultdict(int)
        self.unowned_dirs: dict[str, int] = defaultdict(int)
        self.dup_first: dict[tuple[bytes, int], str] = {}
        self.dup_groups: dict[tuple[bytes, int], list[str]] = {}
        self.top_files: list[tuple[int, str]] = []
        self.top_unowned: list[tuple[int, str]] = []
        self.kernel_libs: list = []
        self.elf_files = self.elf_bad = 0
        self.strip_bytes = self.strip_files = self.strip_skipped = 0
        self.total = self.nfiles = self.odd = 0

    def add(self, r) -> None:
        size, path = r.size, r.path
        self.nfiles += 1
        self.total += size
        if _odd(path):
            self.odd += 1
        cat = category_of(path)
        rest = size
        if getattr(r, "kernels", None) is not None:
            self.kernel_libs.append(r.kernels)
        if r.elf is not None:
            rest = self._elf(r.elf, path, size, cat)
        self.cat_bytes[cat] += rest
        self.cat_files[cat] += 1
        rule = rule_for_file(path)
        if rule:
            self.rule_bytes[rule] += size
            self.rule_files[rule] += 1
        self.layer_visible[r.layer] += size
        self.layer_files[r.layer] += 1
        cut = path.rfind("/")
        parent = path[:cut] if cut > 0 else "/"
        d = parent
        while True:  # every ancestor directory (str.rfind: posixpath.dirname was the hot spot)
            self.dir_bytes[d] += size
            if d == "/":
                break
            cut = d.rfind("/")
            d = d[:cut] if cut > 0 else "/"
        if path not in self.owner:
            self.unowned_dirs[parent] += size
            self._keep(self.top_unowned, size, path)
        self._keep(self.top_files, size, path)
        if size and r.digest is not None:
            k = (r.digest, size)
            first = self.dup_first.get(k)
            if first is None:
                self.dup_first[k] = path
            else:
                self.dup_groups.setdefault(k, [first]).append(path)

    def _elf(self, e, path: str, size: int, cat: str) -> int:
        """Charge an ELF file's debug sections and CUDA kernels to their categories; the bytes left."""
        self.elf_files += 1
        if not e.ok:
            self.elf_bad += 1
        rest = size
        dbg = min(e.debug, rest)
        rest -= dbg
        fat = min(e.fatbin, rest)
        rest -= fat
        if dbg:
            self.cat_bytes["debug"] += dbg
        if fat:
            self.cat_bytes["cuda_kernels"] += fat
        if (e.debug or e.symbols) and cat != "static_libs":
            if strip_hazard(path, (), patchelf_layout=e.patchelf_layout):  # FACTS trap 1
                self.strip_skipped += 1
            else:
                self.strip_bytes += min(size, e.debug + e.symbols)
                self.strip_files += 1
        return rest

    def _keep(self, heap: list[tuple[int, str]], size: int, path: str) -> None:
        if len(heap) < self.top:
            heapq.heappush(heap, (size, path))
        elif size > heap[0][0]:
            heapq.heapreplace(heap, (size, path))

    def cats_sum(self, *names: str) -> int:
        return sum(self.cat_bytes.get(n, 0) for n in names)

    @property
    def dup_bytes(self) -> int:
        return sum(k[1] * (len(v) - 1) for k, v in self.dup_groups.items())


def analyze(scan: ImageScan, view: View, own: Ownership, *, image: str, image_id: str = "",
            engine_size: int | None = None, top: int = 20, gzip_mode: str = "computed",
            extra_problems: list[str] | None = None) -> Analysis:
    """The audit report of a scanned image (module docstring): one pass over the visible files, then
    each section from the sums."""
    t = _Tally(own.owner, top)
    for r in view.files():
        t.add(r)
    t.dup_first.clear()
    problems, loops = _problems(view, t, extra_problems)
    layers, layers_bytes, compressed = _layer_rows(scan, view, t)
    cats = _category_rows(t)
    groups_b: dict[str, int] = defaultdict(int)
    for c in cats:
        groups_b[c["group"]] += c["bytes"]
    labels = ((scan.config or {}).get("config") or {}).get("Labels") or {}
    bytecode_rule = coldstart.bytecode_tradeoff(labels.get(LABEL_CELL), t.cats_sum("bytecode"))
    kernels = _kernels_report(t.kernel_libs)
    hidden_total = sum(h.rec.size for h in view.hidden)
    deleted = sum(h.rec.size for h in view.hidden if h.reason == "deleted")
    report: AuditReport = {
        "schema": SCHEMA,
        "image": image, "id": image_id,
        "totals": {
            "engine_size": engine_size, "layers": layers_bytes, "visible": t.total, "files": t.nfiles,
            "hidden": hidden_total, "deleted": deleted, "overwritten": hidden_total - deleted,
            "duplicates": t.dup_bytes, "wasted": hidden_total + t.dup_bytes, "compressed": compressed,
            "save_stream": scan.save_bytes,
        },
        "compressed_note": NOTE_GZIP, "compressed_mode": gzip_mode,
        "bytecode_rule": bytecode_rule,
        "layers": layers,
        "categories": cats,
        "category_groups": dict(sorted(groups_b.items(), key=lambda kv: -kv[1])),
        "hidden_by_category": _hidden_by_category(view),
        **_package_sections(own, t),
        "ownership_conflicts": own.conflicts,
        "waste": _waste(view, t, hidden_total, deleted),
        "elf": {"files": t.elf_files, "unreadable": t.elf_bad, "debug": t.cat_bytes.get("debug", 0),
                "cuda_kernels": t.cat_bytes.get("cuda_kernels", 0), "strippable": t.strip_bytes},
        "cuda_kernels": kernels,
        "top_files": [{"path": display_path(p), "bytes": b, "category": category_of(p),
                       "package": own.owner.get(p, UNOWNED)} for b, p in sorted(t.top_files, reverse=True)],
        "top_dirs": [{"path": display_path(d), "bytes": b}
                     for b, d in heapq.nlargest(top, ((b, d) for d, b in t.dir_bytes.items() if d != "/"))],
        "suggestions": _suggestions(view, own, t, hidden_total, bytecode_rule, kernels),
        "problems": problems,
        "symlink_loops": loops,
    }
    return Analysis(scan, view, own, report)


def _problems(view: View, t: _Tally, extra: list[str] | None) -> tuple[list[str], list[dict]]:
    """Notes on what could not be read as usual (symlink loops, unreadable ELF headers, odd names)."""
    problems: list[str] = list(extra or [])
    loops: list[dict] = []
    seen_loop: set[str] = set()
    for path, node in view.index.items():
        if type(node) is Rec and node.kind == "l":
            try:
                view.resolve(path)
            except SymlinkLoop as exc:
                if path not in seen_loop:
                    seen_loop.add(path)
                    loops.append({"path": display_path(path), "chain": [display_path(c) for c in exc.chain[1:6]]})
    if loops:
        problems.append(f"{len(loops)} symlink(s) in a loop (not followed; counted as links): "
                        + ", ".join(lp["path"] for lp in loops[:5]))
    if t.elf_bad:
        problems.append(f"{t.elf_bad} ELF file(s) whose section headers could not be read (counted by path only)")
    if t.odd:
        problems.append(f"{t.odd} file(s) with non-UTF-8 or control characters in their names (shown escaped)")
    return problems, loops


def _layer_rows(scan: ImageScan, view: View, t: _Tally) -> tuple[list[Layer], int, int | None]:
    """(one row per layer, the layers' content bytes, their gzip bytes or None when one is unknown)."""
    layers: list[Layer] = []
    for i, ls in enumerate(scan.layers):
        h = scan.history[i] if i < len(scan.history) else {}
        layers.append({
            "index": i, "created_by": _created_by(h), "created": h.get("created", ""),
            "size": ls.content_bytes, "tar_size": ls.tar_size, "compressed": ls.gzip_size,
            "files": sum(1 for e in ls.entries if e.kind == "f"),
            "visible": t.layer_visible.get(i, 0), "visible_files": t.layer_files.get(i, 0),
            "hidden_later": view.hidden_from_layer.get(i, 0),
            "deletes": view.deleted_by_layer.get(i, 0), "overwrites": view.overwritten_by_layer.get(i, 0),
            "whiteouts": len(ls.whiteouts) + len(ls.opaques), "diff_id": ls.digest,
        })
    comp = [ls.gzip_size for ls in scan.layers]
    compressed = sum(comp) if comp and all(c is not None for c in comp) else None
    return layers, sum(ls.content_bytes for ls in scan.layers), compressed


def _category_rows(t: _Tally) -> list[Category]:
    cats: list[Category] = []
    for name, b in sorted(t.cat_bytes.items(), key=lambda kv: -kv[1]):
        c = CATEGORIES.get(name)
        cats.append({"name": name, "group": group_of(name), "bytes": b, "files": t.cat_files.get(name, 0),
                     "rule": c.rule if c else None, "label": c.label if c else name})
    return cats


def _hidden_by_category(view: View) -> dict[str, int]:
    hidden_cat: dict[str, int] = defaultdict(int)
    for h in view.hidden:
        hidden_cat[category_of(h.rec.path)] += h.rec.size
    return dict(sorted(hidden_cat.items(), key=lambda kv: -kv[1]))


def _package_sections(own: Ownership, t: _Tally) -> dict:
    """The report's `packages`, `managers` and `unowned` sections."""
    pkgs = [{"manager": p.manager, "name": p.name, "version": p.version, "key": p.key, "bytes": p.bytes,
             "files": p.files, "location": p.location, "missing": p.missing}
            for p in sorted(own.packages.values(), key=lambda p: -p.bytes)]
    mgr: dict[str, int] = defaultdict(int)
    for p in own.packages.values():
        mgr[p.manager] += p.bytes
    unowned = {"bytes": t.total - sum(p.bytes for p in own.packages.values()),
               "files": t.nfiles - sum(p.files for p in own.packages.values()),
               "top_files": [{"path": display_path(p), "bytes": b} for b, p in sorted(t.top_unowned, reverse=True)],
               "top_dirs": [{"path": display_path(d), "bytes": b}
                            for b, d in heapq.nlargest(t.top, ((b, d) for d, b in t.unowned_dirs.items()))]}
    return {"packages": pkgs, "managers": dict(mgr), "unowned": unowned}


def _waste(view: View, t: _Tally, hidden_total: int, deleted: int) -> Waste:
    top_hidden = heapq.nlargest(t.top, view.hidden, key=lambda h: h.rec.size)
    groups = sorted(t.dup_groups.items(), key=lambda kv: -kv[0][1] * (len(kv[1]) - 1))
    return {
        "hidden": hidden_total, "deleted": deleted, "overwritten": hidden_total - deleted,
        "top_hidden": [{"path": display_path(h.rec.path), "bytes": h.rec.size, "added_in": h.rec.layer,
                        "hidden_by": h.by_layer, "reason": h.reason} for h in top_hidden],
        "duplicates": t.dup_bytes,
        "duplicate_groups": [{"bytes_each": k[1], "copies": len(v), "wasted": k[1] * (len(v) - 1),
                              "digest": k[0].hex(), "paths": [display_path(p) for p in sorted(v)[:10]]}
                             for k, v in groups[:t.top]],
    }


def _suggestions(view: View, own: Ownership, t: _Tally, hidden_total: int, bytecode_rule: dict,
                 kernels: dict | None) -> list[dict]:
    """What a slimming rule (or a change to the build) would save, largest first."""
    sugg = []

    def s(rule: str | None, b: int, text: str) -> None:
        if b > 0:
            sugg.append({"rule": rule, "bytes": b, "text": text})

    s("caches", t.cats_sum("cache:pip", "cache:apt", "cache:conda", "cache:other"),
      "remove pip/apt/conda caches in the layer that creates them (pip --no-cache-dir, rm -rf /var/lib/apt/lists/*)")
    s("docs", t.cats_sum("docs", "man", "locales"), "drop documentation, man pages and locales")
    s("tests", t.cats_sum("tests"), "drop test suites shipped inside Python packages and the standard library")
    s("headers", t.cats_sum("headers"), "drop C/C++/CUDA headers from the runtime image")
    s("static_libs", t.cats_sum("static_libs"), "drop static libraries (.a)")
    s("bytecode", t.cats_sum("bytecode"), bytecode_rule["text"] + ". Without .pyc, Python compiles every module "
      "it imports on every container start (a read-only root or another user cannot cache them)")
    s("strip", t.strip_bytes, f"strip debug sections and symbol tables of {t.strip_files} ELF file(s)"
      + (f"; {t.strip_skipped} auditwheel-repaired file(s) in *.libs/ left out: stripping corrupts them"
         if t.strip_skipped else ""))
    pip_b = sum(p.bytes for p in own.packages.values() if p.manager == "pip" and p.name in ("pip", "wheel"))
    s("pip", pip_b, "uninstall pip and wheel from the runtime (keep setuptools: Paddle 3.x imports it)")
    s("cudnn_train", t.rule_bytes.get("cudnn_train", 0),
      f"drop cuDNN training libraries ({t.rule_files.get('cudnn_train', 0)} file(s)) from inference images")
    s("flashattn", t.rule_bytes.get("flashattn", 0), "drop libflashattn if the workload does not use flash attention")
    s("warpctc", t.rule_bytes.get("warpctc", 0), "drop libwarpctc/libwarprnnt if the workload does not use CTC loss")
    if hidden_total:
        worst = max(view.deleted_by_layer.items(), key=lambda kv: kv[1], default=None)
        s(None, hidden_total, "bytes hidden by later layers still ship: delete files in the same RUN that creates "
          "them, or copy only what is needed into a final stage"
          + (f" (layer {worst[0]} deletes {worst[1]} bytes added below)" if worst and worst[1] else ""))
    if t.dup_bytes:
        s(None, t.dup_bytes, f"{len(t.dup_groups)} set(s) of identical files at different paths: keep one copy "
          "(symlink or hard link)")
    best = max((kernels or {}).get("narrower_targets") or [], key=lambda x: x.get("saves", 0), default=None)
    if best and best["saves"] >= 1_000_000:  # an image already cut to one GPU keeps only stray bytes
        s("gpu_archs", best["saves"], f"gpu_archs: [{best['target']}] in the matrix keeps only the CUDA kernels that GPU "
          "loads (imagegen/scripts/fatprune.py, experimental)")
    sugg.sort(key=lambda x: -x["bytes"])
    return sugg


def _kernels_report(libs: list) -> dict | None:
    from ..gpu_archs import image_report

    for lib in libs:
        lib.path = display_path(lib.path)
    return image_report(libs)


# ---------------------------------------------------------------------------------------------
# comparison


def compare(a: AuditReport, b: AuditReport) -> dict:
    def table(key: str, field: str, name_of) -> list[dict]:
        av = {name_of(x): x[field] for x in a[key]}
        bv = {name_of(x): x[field] for x in b[key]}
        rows = [{"name": n, "a": av.get(n, 0), "b": bv.get(n, 0), "diff": bv.get(n, 0) - av.get(n, 0)}
                for n in set(av) | set(bv)]
        rows.sort(key=lambda r: (-abs(r["diff"]), -max(r["a"], r["b"]), r["name"]))
        return rows

    pa = list(a["packages"]) + [{"key": UNOWNED, "bytes": a["unowned"]["bytes"]}]
    pb = list(b["packages"]) + [{"key": UNOWNED, "bytes": b["unowned"]["bytes"]}]
    totals = [{"name": k, "a": a["totals"].get(k), "b": b["totals"].get(k),
               "diff": (b["totals"][k] - a["totals"][k]) if a["totals"].get(k) is not None
               and b["totals"].get(k) is not None else None}
              for k in ("engine_size", "layers", "visible", "compressed", "hidden", "duplicates", "wasted", "files")]
    return {
        "schema": SCHEMA + "/compare",
        "a": a["image"], "b": b["image"],
        "totals": totals,
        "categories": table("categories", "bytes", lambda x: x["name"]),
        "packages": _pkg_table(pa, pb),
    }


def _pkg_table(pa: list[dict], pb: list[dict]) -> list[dict]:
    av = {x["key"]: x["bytes"] for x in pa}
    bv = {x["key"]: x["bytes"] for x in pb}
    rows = [{"name": n, "a": av.get(n, 0), "b": bv.get(n, 0), "diff": bv.get(n, 0) - av.get(n, 0)}
            for n in set(av) | set(bv)]
    rows.sort(key=lambda r: (-abs(r["diff"]), -max(r["a"], r["b"]), r["name"]))
    return rows


# ---------------------------------------------------------------------------------------------
# gates


def check_gates(report: AuditReport, *, max_size: int | None = None, max_wasted: int | None = None,
                max_cats: dict[str, int] | None = None) -> list[str]:
    """Reasons the report breaches its limits (empty = pass)."""
    from ..units import format_size as human

    reasons = []
    t = report["totals"]
    size = t["engine_size"] if t.get("engine_size") is not None else t["layers"]
    if max_size is not None and size > max_size:
        reasons.append(f"image size {human(size)} ({size} B) exceeds --max-size {human(max_size)} ({max_size} B)")
    if max_wasted is not None and t["wasted"] > max_wasted:
        reasons.append(f"wasted {human(t['wasted'])} ({t['wasted']} B: {t['hidden']} hidden by later layers + "
                       f"{t['duplicates']} duplicate) exceeds --max-wasted {human(max_wasted)} ({max_wasted} B)")
    for name, limit in (max_cats or {}).items():
        got = category_bytes(report, name)
        if got > limit:
            reasons.append(f"category {name} {human(got)} ({got} B) exceeds --max {name}={human(limit)} ({limit} B)")
    return reasons


def category_bytes(report: AuditReport, name: str) -> int:
    """Bytes of a category ('cuda:cudnn') or of a group of categories ('cuda', 'docs', 'caches')."""
    return sum(c["bytes"] for c in report["categories"] if c["name"] == name or
               (c["group"] == name and c["name"] != name))
