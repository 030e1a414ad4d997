"""What a scanned image has installed, and the filtering of trivy's SBOM and findings to it.

trivy's `sbom` analyzer reads SBOM files shipped inside an image (pip carries `pip/_vendor/bom.cdx.json`)
and reports their packages as installed. `Installed` is what the image's final filesystem records as
installed (`*.dist-info`/`*.egg-info` for PyPI, dpkg's status for Debian), read once with the audit's
save-stream reader (`installed`); `keep_installed` removes the rest from a CycloneDX document and says
what it removed and from which SBOM file in the image (`Dropped`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImagegenError

#: names of the SBOM files trivy's `sbom` analyzer reads inside an image (and reports as installed)
SBOM_FILE = re.compile(r"\.(?:cdx|spdx)(?:\.json)?$")
_META_DIR = re.compile(r"/([^/]+)\.(dist|egg)-info(?:/|$)")
SBOM_FILE_MAX = 64 << 20  # bytes: embedded SBOM files larger than this are not read


def canonical_name(name: str) -> str:
    """PEP 503 name: `Foo_Bar.baz` -> `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def canonical_version(version: str) -> str:
    """PEP 440 canonical form (`1.0.0` and `1.0` -> `1`, `1.0-RC1` -> `1rc1`); the raw string, lowercased,
    when it is not a PEP 440 version."""
    from packaging.utils import canonicalize_version

    return str(canonicalize_version(version.strip())).lower()


@dataclass(frozen=True)
class Dropped:
    """A package trivy reported that the image does not have installed. kind: purl type (pypi, deb);
    source: image path of the SBOM file shipped in the image that lists it (or None); reason: a line."""
    kind: str
    name: str
    version: str
    source: str | None
    reason: str


@dataclass
class Installed:
    """What the image records as installed (final filesystem). pypi: `(PEP 503 name, canonical version)` of
    each `*.dist-info`/`*.egg-info` (`pypi_unversioned`: `name.egg-info`); deb: `(package, version)` dpkg's
    status (or status.d) lists as installed (`audit.packages.ownership`); sboms: image path of each SBOM file
    shipped in the image (`*.cdx.json`, `*.spdx.json`, ...) -> the `(purl type, name, version)` it lists."""
    pypi: set[tuple[str, str]] = field(default_factory=set)
    deb: set[tuple[str, str]] = field(default_factory=set)
    pypi_unversioned: set[str] = field(default_factory=set)
    sboms: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)

    @staticmethod
    def _key(kind: str, name: str, version: str) -> tuple[str, str, str]:
        return (kind, canonical_name(name), canonical_version(version)) if kind == "pypi" else (kind, name, version)

    def has(self, kind: str, name: str, version: str) -> bool:
        """Whether the image has `name` `version` installed; True for purl types other than pypi/deb."""
        _, n, v = self._key(kind, name, version)
        if kind == "pypi":
            return (n, v) in self.pypi or n in self.pypi_unversioned
        if kind == "deb":
            return (n, v) in self.deb
        return True

    def dropped(self, kind: str, name: str, version: str) -> Dropped | None:
        """None when the package counts; else what to report, with the first SBOM file (by path) listing it."""
        if self.has(kind, name, version):
            return None
        why = (f"no *.dist-info or *.egg-info for {name} {version} in the image" if kind == "pypi"
               else f"dpkg's status does not list {name} {version}")
        key = self._key(kind, name, version)
        src = next((path for path in sorted(self.sboms) if key in self.sboms[path]), None)
        return Dropped(kind, name, version, src, why + (f"; listed by {src}, an SBOM file in the image" if src else ""))


def sbom_entries(data: dict) -> set[tuple[str, str, str]]:
    """`(purl type, name, version)` of every package a CycloneDX (components, nested) or SPDX JSON
    (packages' purl external refs) document lists; pypi names and versions canonical."""
    out: set[tuple[str, str, str]] = set()

    def add(purl: str, name: str | None, version: str | None) -> None:
        from urllib.parse import unquote

        m = re.match(r"pkg:([a-zA-Z0-9.+-]+)/(?:[^@?#]*/)?([^/@?#]+)@([^?#]+)", purl or "")
        if m:
            out.add(Installed._key(m.group(1).lower(), name or unquote(m.group(2)), version or unquote(m.group(3))))

    def walk(comps) -> None:
        for c in comps or []:
            if isinstance(c, dict):
                add(c.get("purl") or "", c.get("name"), c.get("version"))
                walk(c.get("components"))

    if isinstance(data, dict):
        walk(data.get("components"))
        for pkg in data.get("packages") or []:
            for ref in (pkg.get("externalRefs") or []) if isinstance(pkg, dict) else []:
                if isinstance(ref, dict) and ref.get("referenceType") == "purl":
                    add(ref.get("referenceLocator") or "", pkg.get("name"), pkg.get("versionInfo"))
    return out


def installed_from_view(view, read_file=None) -> Installed:
    """`Installed` from a savestream `View` (the image's final filesystem). `read_file(rec)` returns a
    file's bytes (for the SBOM files shipped in the image; None skips them)."""
    from .audit.packages import ownership

    inst = Installed()
    for path, rec in view.index.items():
        for m in _META_DIR.finditer(path):
            name, _, version = m.group(1).partition("-")
            if version.split("-")[0]:
                inst.pypi.add((canonical_name(name), canonical_version(version.split("-")[0])))
            else:
                inst.pypi_unversioned.add(canonical_name(name))
        if read_file is not None and SBOM_FILE.search(path) and getattr(rec, "kind", None) == "f" \
                and rec.size <= SBOM_FILE_MAX:
            try:
                inst.sboms[path] = sbom_entries(json.loads(read_file(rec)))
            except (ValueError, OSError, KeyError, TypeError):
                inst.sboms[path] = set()
    for pkg in ownership(view).packages.values():
        if pkg.manager == "deb":
            inst.deb.add((pkg.name.split("#")[0], pkg.version))
    return inst


def installed(archive: Path) -> Installed:
    """`Installed` of a `docker save` archive with plain layers (`plain_layers`): one pass of the audit's
    save-stream reader (`savestream`); the SBOM files shipped in the image are then read from their layers."""
    import tarfile

    from .savestream import apply_layers
    from .savestream.layers import read_save_stream
    from .savestream.prefetch import prefetch
    from .savestream.source import file_chunks
    from .savestream.tar import ChunkSource, StreamError, normalize

    try:
        scan = read_save_stream(ChunkSource(prefetch(file_chunks(str(archive)))), want_gzip=lambda n: False,
                                verify=False)
    except StreamError as exc:
        raise ImagegenError(f"{archive}: cannot read the image's files ({exc})") from None
    view, layer_keys = apply_layers(scan), list(scan.manifest.get("Layers") or [])

    def read_file(rec) -> bytes:
        with tarfile.open(archive) as tf, tarfile.open(fileobj=tf.extractfile(layer_keys[rec.layer])) as lt:
            for m in lt:
                if "/" + normalize(m.name) == rec.path and m.isfile():
                    return lt.extractfile(m).read()
        raise KeyError(rec.path)

    return installed_from_view(view, read_file)


def keep_installed(data: dict, inst: Installed) -> list[Dropped]:
    """Remove from a CycloneDX document (trivy's SBOM, in place) the pypi and deb components the image
    does not have installed (`Installed.has`), and their references in `dependencies`. Returns what
    was removed, in document order."""
    dropped: list[Dropped] = []
    refs: set[str] = set()
    keep = []
    for comp in data.get("components") or []:
        m = re.match(r"pkg:([a-z0-9]+)/", comp.get("purl") or "")
        d = inst.dropped(m.group(1), str(comp.get("name")), str(comp.get("version", ""))) if m else None
        (keep if d is None else dropped).append(comp if d is None else d)
        refs |= {comp.get("bom-ref") or comp.get("purl")} if d else set()
    if dropped:
        data["components"] = keep
        for dep in data.get("dependencies") or []:
            if dep.get("dependsOn"):
                dep["dependsOn"] = [r for r in dep["dependsOn"] if r not in refs]
        if "dependencies" in data:
            data["dependencies"] = [dep for dep in data["dependencies"] if dep.get("ref") not in refs]
    return dropped
