"""The SBOM `publish` attaches to an image: trivy's CycloneDX SBOM, kept to what is installed
(sbomfilter), plus what the audit knows that no package manager declares.

- **Libraries vendored inside wheels** (auditwheel's `<dist>.libs/`, NVIDIA's `nvidia/*/lib/`, any
  shared object a pip distribution's RECORD lists that is not its own Python extension): one
  CycloneDX component each (`type: library`), named by file, with the owning distribution, the
  path and the sha256 as properties/hashes, and a dependency edge from the owning distribution's
  component. A package manager only declares the wheel.
- **CUDA kernels**: for every library with a `.nv_fatbin`, the architectures its kernels serve
  (`imagegen:cuda:sass`, `imagegen:cuda:ptx`, `imagegen:cuda:serves`; gpu_archs), on that library's
  component (vendored or Debian's).

Properties use the `imagegen:` namespace (CycloneDX 1.5 "properties": name/value pairs, names
namespaced by the tool that adds them). The result is deterministic for one image: components are
sorted, and the document's serialNumber and timestamp come from the image (config digest and
`org.opencontainers.image.created`), not from the run.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import uuid
from pathlib import Path

_PY_EXT = re.compile(r"\.(cpython|pypy)[^/]*\.so$|\.abi3\.so$")
_SHARED = re.compile(r"\.so(\.\d+)*$")
PROP = "imagegen:"


def vendored_libraries(analysis) -> list[dict]:
    """[{path, owner (pip distribution name), size, sha256 (hex, "" when not computed)}] for the shared
    libraries pip distributions carry that are not Python extension modules."""
    out = []
    for rec, _category, owner in analysis.file_rows():
        if not owner.startswith("pip:") or not _SHARED.search(rec.path) or _PY_EXT.search(rec.path):
            continue
        digest = rec.digest.hex() if rec.digest is not None and len(rec.digest) == 32 else ""
        out.append({"path": rec.path, "owner": owner.split(":", 1)[1], "size": rec.size, "sha256": digest})
    return sorted(out, key=lambda v: v["path"])


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def canonical_refs(data: dict) -> dict:
    """Replace the random UUID bom-refs trivy gives components without a purl (the OS, the image) by
    names derived from the component (`imagegen:<type>:<name>@<version>`), everywhere they are used,
    and sort the dependency graph: two SBOMs of one image are then the same bytes. In place; returned."""
    renames: dict[str, str] = {}

    def visit(comp: dict) -> None:
        ref = comp.get("bom-ref", "")
        if _UUID.match(ref):
            new = f"imagegen:{comp.get('type', '')}:{comp.get('name', '')}@{comp.get('version', '')}"
            while new in renames.values():
                new += "+"
            renames[ref] = new
            comp["bom-ref"] = new
        for child in comp.get("components") or []:
            visit(child)

    meta = data.get("metadata") or {}
    if isinstance(meta.get("component"), dict):
        visit(meta["component"])
    for comp in data.get("components") or []:
        visit(comp)
    deps = data.get("dependencies") or []
    for d in deps:
        d["ref"] = renames.get(d.get("ref"), d.get("ref"))
        d["dependsOn"] = sorted(renames.get(r, r) for r in d.get("dependsOn") or [])
    deps.sort(key=lambda d: d.get("ref") or "")
    return data


def augment(data: dict, analysis, *, serial_seed: str = "", timestamp: str | None = None) -> dict:
    """Add the vendored libraries and CUDA kernel facts of `analysis` (audit.core.audit of the same
    image) to the CycloneDX document `data` (in place; also returned)."""
    comps = data.setdefault("components", [])
    by_name = {}
    for c in comps:
        if c.get("type") == "library" and c.get("name"):
            by_name.setdefault(c["name"].lower().replace("_", "-"), c)
    kernels = {row["path"]: row for row in ((analysis.report.get("cuda_kernels") or {}).get("libraries") or [])}
    deps: dict[str, list[str]] = {}
    for lib in vendored_libraries(analysis):
        ref = f"imagegen:file:{lib['path']}"
        comp = {"bom-ref": ref, "type": "library", "name": lib["path"].rsplit("/", 1)[-1],
                "properties": [{"name": f"{PROP}path", "value": lib["path"]},
                               {"name": f"{PROP}vendored-by", "value": lib["owner"]},
                               {"name": f"{PROP}size", "value": str(lib["size"])}]}
        if lib["sha256"]:
            comp["hashes"] = [{"alg": "SHA-256", "content": lib["sha256"]}]
        _kernel_props(comp, kernels.get(_display(lib["path"])))
        comps.append(comp)
        owner = by_name.get(lib["owner"].lower().replace("_", "-"))
        if owner is not None and owner.get("bom-ref"):
            deps.setdefault(owner["bom-ref"], []).append(ref)
    vendored = {f"/{c['properties'][0]['value'].lstrip('/')}" for c in comps if c.get("bom-ref", "").startswith("imagegen:file:")}
    for path, row in sorted(kernels.items()):  # kernels in libraries no pip distribution vendors (Debian's)
        if f"/{path.lstrip('/')}" in vendored:
            continue
        comp = {"bom-ref": f"imagegen:file:{path}", "type": "library", "name": path.rsplit("/", 1)[-1],
                "properties": [{"name": f"{PROP}path", "value": path}]}
        _kernel_props(comp, row)
        comps.append(comp)
    if deps:
        edges = {d.get("ref"): d for d in data.setdefault("dependencies", [])}
        for parent, children in sorted(deps.items()):
            entry = edges.get(parent)
            if entry is None:
                entry = {"ref": parent, "dependsOn": []}
                data["dependencies"].append(entry)
            entry["dependsOn"] = sorted(set(entry.get("dependsOn") or []) | set(children))
    comps.sort(key=lambda c: (c.get("type", ""), c.get("name", ""), c.get("version", ""), c.get("bom-ref", "")))
    if serial_seed:
        data["serialNumber"] = f"urn:uuid:{uuid.UUID(hashlib.sha256(serial_seed.encode()).hexdigest()[:32])}"
    if timestamp:
        data.setdefault("metadata", {})["timestamp"] = timestamp
    tools = data.setdefault("metadata", {}).setdefault("tools", {})
    if isinstance(tools, dict):
        tools.setdefault("components", []).append({"type": "application", "name": "imagegen",
                                                   "version": _version()})
    return data


def _display(path: str) -> str:
    from .audit.report import display_path

    return display_path(path)


def _version() -> str:
    from . import __version__

    return __version__


def _kernel_props(comp: dict, row: dict | None) -> None:
    if not row:
        return
    ships = row.get("ships") or []
    sass = [n for n in ships if n.startswith("sm_")]
    ptx = [n for n in ships if n.startswith("compute_")]
    comp["properties"] += [{"name": f"{PROP}cuda:sass", "value": ",".join(sass)},
                           {"name": f"{PROP}cuda:ptx", "value": ",".join(ptx)},
                           {"name": f"{PROP}cuda:serves", "value": ",".join(row.get("serves") or [])},
                           {"name": f"{PROP}cuda:fatbin-bytes", "value": str(row.get("fatbin_bytes", 0))}]


def for_image(ref: str, *, config_digest: str, created: str | None) -> bytes:
    """The SBOM (CycloneDX JSON bytes) of the local image `ref`: trivy's, installed-only, augmented
    (module docstring). Raises ImagegenError (trivy missing or failing, the engine)."""
    from . import trivy
    from .audit.core import audit
    from .sbomfilter import installed

    with tempfile.TemporaryDirectory(prefix="imagegen-sbom-") as tmp:
        archive = trivy.plain_layers(trivy.save_image(ref, Path(tmp) / "image.tar"), Path(tmp))
        out = Path(tmp) / "sbom.cdx.json"
        trivy.sbom(archive, out, installed=installed(archive), target=ref)
        data = json.loads(out.read_text())
        analysis = audit(tarball=str(archive), compressed=False, strong=True)
    augment(canonical_refs(data), analysis, serial_seed=config_digest, timestamp=created)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
