"""Terminal view of an audit report (rich tables on stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..units import format_size as human
from .schema import AuditReport


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _t(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", show_edge=False, pad_edge=False)


def print_report(report: AuditReport, console: Console, *, top: int = 20) -> None:
    """The audit report as tables on `console`: totals, layers, categories, packages, waste, top files and
    directories, CUDA kernels, suggestions, notes."""
    r = report
    t = r["totals"]
    console.print(Text(f"audit of {r['image']}  {r['id'][:19]}", style="bold"))
    line = (f"size {human(t['engine_size'] if t['engine_size'] is not None else t['layers'])}"
            f"  |  visible files {human(t['visible'])} in {t['files']} files"
            f"  |  hidden by later layers {human(t['hidden'])}  |  duplicates {human(t['duplicates'])}"
            f"  |  wasted {human(t['wasted'])}  |  compressed {human(t['compressed'])} ({r['compressed_mode']})")
    console.print(line, markup=False)
    console.print()
    for section in (_layers, _categories, _packages, _waste, _files_and_dirs):
        section(r, console, top)
    if r.get("cuda_kernels"):
        print_kernels(r["cuda_kernels"], console, top=top)
    if r["suggestions"]:
        st = _t("Suggestions")
        for col, j in (("saves", "right"), ("build rule", "left"), ("what", "left")):
            st.add_column(col, justify=j)
        for s in r["suggestions"]:
            st.add_row(human(s["bytes"]), s["rule"] or "(none)", Text(s["text"]))
        console.print(st)
        console.print()
    if r.get("bytecode_rule"):
        console.print(Text("trade-off: " + r["bytecode_rule"]["text"]))
    for p in r["problems"]:
        console.print(Text(f"note: {p}", style="yellow"))


def _layers(r: AuditReport, console: Console, top: int) -> None:
    lt = _t("Layers")
    for col in ("#", "size", "compressed", "still visible", "hidden later", "removes below", "created by"):
        lt.add_column(col, justify="right" if col not in ("created by",) else "left", no_wrap=col != "created by")
    for L in r["layers"]:
        lt.add_row(str(L["index"]), human(L["size"]), human(L["compressed"]), human(L["visible"]),
                   human(L["hidden_later"]) if L["hidden_later"] else "",
                   human(L["deletes"] + L["overwrites"]) if L["deletes"] + L["overwrites"] else "",
                   Text(_short(L["created_by"], 80)))
    console.print(lt)
    console.print()


def _categories(r: AuditReport, console: Console, top: int) -> None:
    t = r["totals"]
    whole = r["totals"]["layers"]
    ct = _t("Categories (they add up to the total)")
    for col, j in (("category", "left"), ("bytes", "right"), ("share", "right"), ("files", "right"),
                   ("slimming rule", "left")):
        ct.add_column(col, justify=j)
    for c in r["categories"]:
        ct.add_row(c["name"], human(c["bytes"]), _pct(c["bytes"], whole), str(c["files"] or ""), c["rule"] or "")
    if t["hidden"]:
        ct.add_row("(hidden by later layers)", human(t["hidden"]), _pct(t["hidden"], whole), "", "")
    ct.add_row(Text("total", style="bold"), Text(human(whole), style="bold"), "100%", str(t["files"]), "")
    console.print(ct)
    console.print()


def _packages(r: AuditReport, console: Console, top: int) -> None:
    whole = r["totals"]["layers"]
    pt = _t(f"Packages (top {top})")
    for col, j in (("package", "left"), ("version", "left"), ("bytes", "right"), ("share", "right"),
                   ("files", "right")):
        pt.add_column(col, justify=j)
    rows = r["packages"][:top]
    for p in rows:
        pt.add_row(p["key"], p["version"], human(p["bytes"]), _pct(p["bytes"], whole), str(p["files"]))
    u = r["unowned"]
    pt.add_row(Text("(unowned)", style="yellow"), "", human(u["bytes"]), _pct(u["bytes"], whole), str(u["files"]))
    console.print(pt)
    mgr = ", ".join(f"{k} {human(v)}" for k, v in r["managers"].items())
    if mgr:
        console.print(f"by manager: {mgr}, unowned {human(u['bytes'])}", markup=False)
    if u["top_dirs"]:
        console.print("largest unowned directories: " + ", ".join(
            f"{d['path']} {human(d['bytes'])}" for d in u["top_dirs"][:5]), markup=False)
    console.print()


def _waste(r: AuditReport, console: Console, top: int) -> None:
    w = r["waste"]
    if w["top_hidden"] or w["duplicate_groups"]:
        wt = _t("Waste")
        for col, j in (("kind", "left"), ("bytes", "right"), ("path(s)", "left"), ("layers", "left")):
            wt.add_column(col, justify=j)
        for h in w["top_hidden"][:top]:
            wt.add_row(h["reason"], human(h["bytes"]), Text(h["path"]), f"added {h['added_in']}, hidden by {h['hidden_by']}")
        for g in w["duplicate_groups"][:top]:
            wt.add_row(f"duplicate x{g['copies']}", human(g["wasted"]), Text(", ".join(g["paths"][:3])), "")
        console.print(wt)
        console.print()


def _files_and_dirs(r: AuditReport, console: Console, top: int) -> None:
    ft = _t(f"Top {top} files")
    for col, j in (("bytes", "right"), ("path", "left"), ("category", "left"), ("package", "left")):
        ft.add_column(col, justify=j)
    for f in r["top_files"][:top]:
        ft.add_row(human(f["bytes"]), Text(f["path"]), f["category"], f["package"])
    console.print(ft)
    console.print()
    dt = _t(f"Top {top} directories")
    dt.add_column("bytes", justify="right")
    dt.add_column("directory")
    for d in r["top_dirs"][:top]:
        dt.add_row(human(d["bytes"]), Text(d["path"]))
    console.print(dt)
    console.print()


def print_compare(cmp: dict, console: Console, *, top: int = 20) -> None:
    console.print(Text(f"compare A = {cmp['a']}  with  B = {cmp['b']}", style="bold"))
    for title, rows, n in (("Totals", cmp["totals"], None), ("Categories", cmp["categories"], None),
                           (f"Packages (top {top} by difference)", cmp["packages"], top)):
        tb = _t(title)
        for col, j in (("", "left"), ("A", "right"), ("B", "right"), ("B − A", "right")):
            tb.add_column(col, justify=j)
        for row in rows[:n] if n else rows:
            if title == "Totals" and row["name"] == "files":
                tb.add_row(row["name"], str(row["a"]), str(row["b"]), f"{row['diff']:+d}")
                continue
            style = "green" if (row["diff"] or 0) < 0 else ("red" if (row["diff"] or 0) > 0 else "")
            tb.add_row(row["name"], human(row["a"]), human(row["b"]),
                       Text(human(row["diff"], signed=True), style=style))
        console.print(tb)
        console.print()


def _site_rel(path: str) -> str:
    """A library's path below site-packages (the part that names it), else the path."""
    return path.split("site-packages/", 1)[1] if "site-packages/" in path else path


def print_kernels(k: dict, console: Console, *, top: int = 20) -> None:
    """CUDA kernel bytes per architecture per library, what the image runs on, and what one
    narrower target would keep."""
    names = list(k["by_arch"])
    emb = k.get("embedded_total", 0)
    also = f", {human(emb)} embedded in data sections" if emb else ""
    kt = _t(f"CUDA kernels by GPU architecture ({human(k['total'])} of .nv_fatbin{also}; top {top} libraries)")
    kt.add_column("library")
    kt.add_column("total", justify="right")
    if emb:
        kt.add_column("embedded", justify="right")
    for n in names:
        kt.add_column(n, justify="right")
    for lib in k["libraries"][:top]:
        cells = [human(lib["bytes"][n]) if lib["bytes"].get(n) else "" for n in names]
        kt.add_row(Text(_short(_site_rel(lib["path"]), 60)), human(lib["fatbin_bytes"]),
                   *([human(lib["embedded_bytes"]) if lib["embedded_bytes"] else ""] if emb else []), *cells)
    kt.add_row(Text("all libraries", style="bold"), Text(human(k["total"]), style="bold"),
               *([Text(human(emb), style="bold")] if emb else []), *[human(k["by_arch"][n]) for n in names])
    console.print(kt)
    ro = k["runs_on"]
    console.print(f"runs on: {', '.join(ro['archs']) or 'no GPU (no architecture every library serves)'}"
                  f"  (label io.imagegen.cuda.archs; {ro['libraries']} libraries with CUDA kernels)", markup=False)
    for path, lost in ro["narrowing"].items():
        console.print(f"  narrowed by {path}: no kernels for {', '.join(lost)}", markup=False)
    for path, served in ro["feature_libraries"].items():
        console.print(f"  feature-only {path}: serves {', '.join(served) or 'nothing'} (not counted)", markup=False)
    for path, why in ro["unreadable"].items():
        console.print(Text(f"  unreadable {path}: {why}", style="yellow"))
    if k["narrower_targets"]:
        nt = _t("A narrower target (one GPU architecture) would keep")
        for col, j in (("target", "left"), ("kernels kept", "right"), ("saves", "right"), ("share", "right")):
            nt.add_column(col, justify=j)
        for t in k["narrower_targets"]:
            nt.add_row(t["target"], human(t["kept"]), human(t["saves"]), _pct(t["saves"], k["total"]))
        console.print(nt)
    console.print()
