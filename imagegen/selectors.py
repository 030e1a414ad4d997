"""Variant selectors: which matrix cells a `--variant` names (short, framework-scoped, full tag, glob)."""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import TYPE_CHECKING, Any

from .errors import UserInputError

if TYPE_CHECKING:  # annotations only: matrix imports this module
    from .matrix import Cell


def resolve_selector(m: Any, pattern: str) -> list[Any]:
    """A short selector (gpu-cuda11.8-slim), a full tag (paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim),
    a framework-scoped one (paddle:3.3.1-cpu-slim, torch:cpu-slim) or a glob (paddle:*-cpu-*)."""
    pattern = pattern.strip()
    if not pattern or len(pattern) > 200 or re.search(r"\s", pattern):
        raise UserInputError(f"'{pattern}' is not a variant selector")
    active = m.active

    def names(c: Cell) -> list[str]:
        return [c.ref, f"{c.framework}:{c.tag}", c.id, c.tag, c.selector, f"{c.framework}:{c.selector}",
                f"{c.image}:{c.selector}", f"{c.framework}:{c.version}-{c.selector}",
                f"{c.image}:{c.version}-{c.selector}", f"{c.version}-{c.selector}"]

    if any(ch in pattern for ch in "*?["):
        hits = [c for c in active if any(fnmatch.fnmatchcase(n, pattern) for n in names(c))]
        if not hits:
            raise UserInputError(f"variant pattern '{pattern}' matches no cell; try `imagegen list`")
        return hits
    for group in (lambda c: [c.ref, f"{c.framework}:{c.tag}", c.id],  # exact full names first
                  lambda c: [c.tag, f"{c.framework}:{c.version}-{c.selector}", f"{c.image}:{c.version}-{c.selector}",
                             f"{c.version}-{c.selector}"],
                  None):
        if group is None:
            hits = [c for c in active if pattern in (c.selector, f"{c.framework}:{c.selector}",
                                                      f"{c.image}:{c.selector}")]
        else:
            hits = [c for c in active if pattern in group(c)]
        if len(hits) > 1 and group is None and m.file.default and ":" not in pattern:
            fw, _, ver = m.file.default.partition(":")
            scoped = [c for c in hits if c.framework == fw and (not ver or c.version == ver)]
            if len(scoped) == 1:
                return scoped
        if len(hits) == 1:
            return hits
        if len(hits) > 1:
            raise UserInputError(f"variant '{pattern}' is ambiguous; candidates: {', '.join(c.ref for c in hits)}")
    excluded = [c for c in m.excluded if pattern in names(c)]
    if excluded:
        raise UserInputError(f"variant '{pattern}' is excluded from the matrix: {excluded[0].excluded}")
    close = difflib.get_close_matches(pattern, sorted({n for c in active for n in (c.selector, c.ref)}), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; try `imagegen list`"
    raise UserInputError(f"no cell matches variant '{pattern}'{hint}")
