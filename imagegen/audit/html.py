"""`--html FILE`: one self-contained page (no CDN, no network): a treemap of the image contents,
navigable by category, package and layer, and the report's tables."""

from __future__ import annotations

import html as _html
import json
from importlib import resources

from ..units import format_size as human
from .categories import category_of
from .packages import UNOWNED
from .report import Analysis, display_path
from .schema import AuditReport

HIDDEN = "(hidden by later layers)"
MAX_NODES = 6000


def _insert(tree: dict, parts: list[str], size: int) -> None:
    node = tree
    node["$"] = node.get("$", 0) + size
    for p in parts:
        node = node.setdefault(p, {})
        node["$"] = node.get("$", 0) + size


def _to_list(name: str, node: dict, min_size: int) -> list:
    """[name, bytes, children] with small children merged and single-child chains collapsed."""
    size = node.get("$", 0)
    kids = [(k, v) for k, v in node.items() if k != "$"]
    while len(kids) == 1 and any(k2 != "$" for k2 in kids[0][1]) and name not in ("",):
        k, v = kids[0]
        name = f"{name}/{k}" if not name.endswith("/") else name + k
        kids = [(k2, v2) for k2, v2 in v.items() if k2 != "$"]
    if not kids:
        return [name, size]
    big = [(k, v) for k, v in kids if v.get("$", 0) >= min_size]
    small = [(k, v) for k, v in kids if v.get("$", 0) < min_size]
    out = [_to_list(k, v, min_size) for k, v in sorted(big, key=lambda kv: -kv[1].get("$", 0))]
    if small:
        rest = sum(v.get("$", 0) for _, v in small)
        if rest:
            out.append([f"({len(small)} smaller)", rest])
    return [name, size, out]


def build_views(a: Analysis) -> dict:
    r = a.report
    owner = a.own.owner
    layer_name = {L["index"]: f"layer {L['index']}: {L['created_by'][:60]}" for L in r["layers"]}
    trees = {"category": {}, "package": {}, "layer": {}}
    for rec in a.view.files():
        if not rec.size:
            continue
        parts = [display_path(p) for p in rec.path.strip("/").split("/")]
        cat = category_of(rec.path)
        e = rec.elf
        rest = rec.size
        if e is not None:
            dbg = min(e.debug, rest)
            fat = min(e.fatbin, rest - dbg)
            rest -= dbg + fat
            if dbg:
                _insert(trees["category"], ["debug"] + parts, dbg)
            if fat:
                _insert(trees["category"], ["cuda_kernels"] + parts, fat)
        if rest:
            _insert(trees["category"], [cat] + parts, rest)
        _insert(trees["package"], [owner.get(rec.path, UNOWNED)] + parts, rec.size)
        _insert(trees["layer"], [layer_name.get(rec.layer, f"layer {rec.layer}")] + parts, rec.size)
    for h in a.view.hidden:
        parts = [display_path(p) for p in h.rec.path.strip("/").split("/")]
        for t in trees.values():
            _insert(t, [HIDDEN, f"{h.reason} by layer {h.by_layer}"] + parts, h.rec.size)
    total = r["totals"]["layers"] or 1
    min_size = max(1, total // MAX_NODES)
    views = {}
    for name, tree in trees.items():
        top = [_to_list(k, v, min_size) for k, v in sorted(((k, v) for k, v in tree.items() if k != "$"),
                                                           key=lambda kv: -kv[1].get("$", 0))]
        views[name] = [f"{r['image']} by {name}", tree.get("$", 0), top]
    return views


def _table(headers: list[str], rows: list[list], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    h = "".join(f"<th>{_html.escape(x)}</th>" for x in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"{'num' if i in numeric else ''}\">{_html.escape(str(c))}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _tables(r: AuditReport, top: int) -> str:
    t = r["totals"]
    whole = t["layers"] or 1
    parts = [
        "<h2>Layers</h2>",
        _table(["#", "size", "compressed", "still visible", "hidden later", "removes below", "created by"],
               [[L["index"], human(L["size"]), human(L["compressed"]), human(L["visible"]),
                 human(L["hidden_later"]), human(L["deletes"] + L["overwrites"]), L["created_by"]]
                for L in r["layers"]], {0, 1, 2, 3, 4, 5}),
        "<h2>Categories</h2>",
        _table(["category", "bytes", "share", "files", "slimming rule"],
               [[c["name"], human(c["bytes"]), f"{100 * c['bytes'] / whole:.1f}%", c["files"], c["rule"] or ""]
                for c in r["categories"]] + [[HIDDEN, human(t["hidden"]), f"{100 * t['hidden'] / whole:.1f}%", "", ""],
                                             ["total", human(t["layers"]), "100%", t["files"], ""]], {1, 2, 3}),
        "<h2>Packages</h2>",
        _table(["package", "version", "bytes", "files"],
               [[p["key"], p["version"], human(p["bytes"]), p["files"]] for p in r["packages"][:top * 3]]
               + [[UNOWNED, "", human(r["unowned"]["bytes"]), r["unowned"]["files"]]], {2, 3}),
        "<h2>Waste</h2>",
        _table(["kind", "bytes", "path(s)", "layers"],
               [[h["reason"], human(h["bytes"]), h["path"], f"added {h['added_in']}, hidden by {h['hidden_by']}"]
                for h in r["waste"]["top_hidden"]]
               + [[f"duplicate x{g['copies']}", human(g["wasted"]), ", ".join(g["paths"][:4]), ""]
                  for g in r["waste"]["duplicate_groups"]], {1}),
        "<h2>Top files</h2>",
        _table(["bytes", "path", "category", "package"],
               [[human(f["bytes"]), f["path"], f["category"], f["package"]] for f in r["top_files"]], {0}),
        "<h2>Top directories</h2>",
        _table(["bytes", "directory"], [[human(d["bytes"]), d["path"]] for d in r["top_dirs"]], {0}),
        "<h2>Suggestions</h2>",
        _table(["saves", "build rule", "what"],
               [[human(s["bytes"]), s["rule"] or "(none)", s["text"]] for s in r["suggestions"]], {0}),
    ]
    k = r.get("cuda_kernels")
    if k:
        names = list(k["by_arch"])
        ro = k["runs_on"]
        emb = k.get("embedded_total", 0)
        ecol = ["embedded"] if emb else []
        parts += [
            "<h2>CUDA kernels by GPU architecture</h2>",
            f"<p>Runs on: <b>{_html.escape(', '.join(ro['archs']) or 'no GPU')}</b> "
            f"(label io.imagegen.cuda.archs; {ro['libraries']} libraries with CUDA kernels)."
            + (f" Besides .nv_fatbin, {human(emb)} of fat binaries embedded in data sections." if emb else "")
            + "</p>",
            _table(["library", "total"] + ecol + names,
                   [[lib["path"], human(lib["fatbin_bytes"])]
                    + ([human(lib["embedded_bytes"]) if lib["embedded_bytes"] else ""] if emb else [])
                    + [human(lib["bytes"][n]) if lib["bytes"].get(n) else "" for n in names]
                    for lib in k["libraries"][:top]]
                   + [["all libraries", human(k["total"])] + ([human(emb)] if emb else [])
                      + [human(k["by_arch"][n]) for n in names]],
                   set(range(1, len(names) + len(ecol) + 2))),
        ]
        notes = ([f"narrowed by {p}: no kernels for {', '.join(v)}" for p, v in ro["narrowing"].items()]
                 + [f"feature-only {p}: serves {', '.join(v) or 'nothing'} (not counted)"
                    for p, v in ro["feature_libraries"].items()]
                 + [f"unreadable {p}: {v}" for p, v in ro["unreadable"].items()])
        if notes:
            parts.append("<ul>" + "".join(f"<li>{_html.escape(n)}</li>" for n in notes) + "</ul>")
        if k["narrower_targets"]:
            parts += ["<h3>A narrower target (one GPU architecture) would keep</h3>",
                      _table(["target", "kernels kept", "saves"],
                             [[t["target"], human(t["kept"]), human(t["saves"])] for t in k["narrower_targets"]],
                             {1, 2})]
    if r["problems"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_html.escape(p)}</li>" for p in r["problems"]) + "</ul>")
    return "\n".join(parts)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 6px}
#summary{color:#444;margin-bottom:10px}
#views button{margin-right:6px;padding:4px 10px;border:1px solid #888;background:#f4f4f4;cursor:pointer}
#views button.on{background:#335;color:#fff}
#crumbs{margin:8px 0;font-size:13px} #crumbs a{color:#225}
#treemap{position:relative;width:100%;height:560px;border:1px solid #999;overflow:hidden;background:#eee}
.tm-cell{position:absolute;overflow:hidden;box-sizing:border-box;border:1px solid rgba(0,0,0,.25)}
.tm-zoom{cursor:zoom-in} .tm-d1{border-color:rgba(0,0,0,.12)}
.tm-label{display:block;font-size:11px;padding:1px 3px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _json_script(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def page(a: Analysis, *, top: int = 20) -> str:
    r = a.report
    t = r["totals"]
    js = resources.files("imagegen.audit").joinpath("assets/treemap.js").read_text(encoding="utf-8")
    data = {"views": build_views(a), "initial": "category"}
    summary = (f"size {human(t['engine_size'] if t['engine_size'] is not None else t['layers'])} · visible "
               f"{human(t['visible'])} in {t['files']} files · hidden by later layers {human(t['hidden'])} · "
               f"duplicates {human(t['duplicates'])} · compressed {human(t['compressed'])}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>imagegen audit: {_html.escape(r['image'])}</title><style>{CSS}</style></head>
<body>
<h1>imagegen audit: {_html.escape(r['image'])}</h1>
<div id="summary">{_html.escape(summary)}</div>
<div id="views"><button data-view="category">by category</button><button data-view="package">by package</button><button data-view="layer">by layer</button></div>
<div id="crumbs"></div>
<div id="treemap" data-rendered="0"></div>
<div id="tip"></div>
{_tables(r, top)}
<script type="application/json" id="audit-data">{_json_script(data)}</script>
<script>{js}</script>
</body></html>
"""


def write(a: Analysis, path: str, *, top: int = 20) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(page(a, top=top))
