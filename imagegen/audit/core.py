"""Entry points: audit a local image through the engine's save stream, or a `docker save` tarball."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..savestream import apply_layers, read_image, read_tarball
from .packages import ownership
from .report import Analysis, analyze


def audit(ref: str | None = None, *, tarball: str | None = None, compressed: bool = True, top: int = 20,
          log: Callable[[str], None] | None = None, strong: bool = False) -> Analysis:
    """Audit a local image (by reference) or a `docker save` tarball. strong: a full sha256 per file
    (the SBOM's hashes). Raises ImagegenError subclasses."""
    t0 = time.monotonic()
    if tarball:
        scan, info, mode = read_tarball(tarball, compressed=compressed, log=log, strong=strong)
        name, image_id, engine_size = tarball, scan.manifest.get("Config", ""), None
        tags = scan.manifest.get("RepoTags") or []
        if tags:
            name = f"{tags[0]} ({tarball})"
    else:
        assert ref is not None
        scan, info, mode = read_image(ref, compressed=compressed, log=log, strong=strong)
        name, image_id, engine_size = ref, info.get("Id", ""), info.get("Size")
    view = apply_layers(scan)
    own = ownership(view)
    a = analyze(scan, view, own, image=name, image_id=image_id, engine_size=engine_size, top=top, gzip_mode=mode)
    a.report["seconds"] = round(time.monotonic() - t0, 3)
    return a
