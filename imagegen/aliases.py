"""Alias tags of the matrix's cells: computed (docker-library style) and declared.

Computed from the versions in the matrix (active cells only), per image repository:
- `minor`: the newest patch of each `major.minor` gets `<major.minor>-<selector>`, e.g.
  `paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim` -> `paddle:2.6-gpu-cuda11.8-slim`;
- `latest: device`: per device, the newest cell of `latest_flavor` gets `latest-<device>`
  (ties between CUDA / Python variants go to the newest CUDA, then the newest Python);
  `latest: single`: the newest cell of `latest_flavor` on `latest_device` gets `latest`;
  `latest: none`: no latest alias.
Declared: `aliases.rules` entries select cells like overrides (glob `match` over the full tag and/or
axes) and add `tags`.

An alias is a tag in the cell's image repository; two cells claiming the same `image:alias`, or an
alias equal to a cell's own immutable tag, is a matrix error naming both.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Claim:
    cell_ref: str
    where: str  # matrix.yaml:LINE of the rule (or the aliases block) that gave the alias


def _v(text: str | None) -> Version:
    try:
        return Version(text or "0")
    except InvalidVersion:
        return Version("0")


def major_minor(version: str) -> str | None:
    rel = _v(version).release
    return f"{rel[0]}.{rel[1]}" if len(rel) >= 2 else None


def _primary_python(cell) -> bool:
    """The cell is on its version's primary (first listed) Python: its tag carries no -py3.X part."""
    return "-py" not in cell.tag


def _newest(cells: list) -> object:
    """The newest version, then CUDA; among equals the primary Python's cell (plain tag), so `latest`
    points at the image a user gets without naming a Python."""
    return max(cells, key=lambda c: (_v(c.version), _v(c.cuda), _primary_python(c), _v(c.python)))


def compute(cells: list, *, minor: bool, latest: str, latest_flavor: str, latest_device: str,
            rules: Iterable[tuple[Callable[[object], bool], list[str], str]], where: str) -> dict[str, list[Claim]]:
    """`{image:alias -> [Claim, ...]}` for the active `cells` (objects with matrix.Cell's fields).

    `rules` are `(matches(cell) -> bool, tags, where)`. More than one claim on a key is a conflict the
    caller reports (see `conflicts`)."""
    claims: dict[str, list[Claim]] = defaultdict(list)

    def claim(cell, alias: str, src: str) -> None:
        key = f"{cell.image}:{alias}"
        if all(c.cell_ref != cell.ref for c in claims[key]):
            claims[key].append(Claim(cell.ref, src))

    if minor:
        groups: dict[tuple, list] = defaultdict(list)
        for c in cells:
            mm = major_minor(c.version)
            if mm:
                groups[(c.image, mm, c.selector)].append(c)
        for (_image, mm, selector), members in groups.items():
            newest = max(members, key=lambda c: _v(c.version))
            alias = f"{mm}-{selector}"
            if alias != newest.tag:
                claim(newest, alias, where)
    if latest in ("device", "single"):
        by_repo: dict[tuple, list] = defaultdict(list)
        for c in cells:
            if c.flavor != latest_flavor:
                continue
            if latest == "single" and c.device != latest_device:
                continue
            by_repo[(c.image, c.device if latest == "device" else "")].append(c)
        for (_image, device), members in by_repo.items():
            claim(_newest(members), f"latest-{device}" if latest == "device" else "latest", where)
    for matches, tags, src in rules:
        for c in cells:
            if matches(c):
                for t in tags:
                    claim(c, t, src)
    return dict(claims)


def conflicts(claims: dict[str, list[Claim]], tags: dict[str, str]) -> list[str]:
    """One message per alias claimed twice, or equal to another cell's immutable tag.

    `tags` maps every cell's `image:tag` to where it is defined."""
    problems = []
    for key, who in sorted(claims.items()):
        if len(who) > 1:
            a, b = who[0], who[1]
            problems.append(f"alias {key} is claimed by two cells: {a.cell_ref} ({a.where}) and "
                            f"{b.cell_ref} ({b.where})")
        elif key in tags:
            problems.append(f"alias {key} of {who[0].cell_ref} ({who[0].where}) is the immutable tag of a "
                            f"cell defined at {tags[key]}")
    return problems


def by_cell(claims: dict[str, list[Claim]]) -> dict[str, tuple[str, ...]]:
    """`{cell ref -> (alias tag, ...)}` sorted, for cells with at least one alias."""
    out: dict[str, list[str]] = defaultdict(list)
    for key, who in claims.items():
        out[who[0].cell_ref].append(key.split(":", 1)[1])
    return {ref: tuple(sorted(tags)) for ref, tags in out.items()}
