"""Byte counts for humans and from humans. Decimal units (kB, MB, GB, TB) are powers of 1000,
as `docker images` prints them; binary units (KiB, MiB, GiB, TiB) are powers of 1024."""

from __future__ import annotations

import re

from ..errors import UserInputError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_RX = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, what: str = "size") -> int:
    """'800MB' -> 800000000, '4.5GB' -> 4500000000, '1GiB' -> 1073741824, '123' -> 123."""
    m = _RX.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UserInputError(f"invalid {what} {text!r}: use bytes or a unit, e.g. 800MB, 4.5GB, 2GiB")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def human(n: int | float | None, signed: bool = False) -> str:
    if n is None:
        return "—"
    sign = ""
    if n < 0:
        sign, n = "-", -n
    elif signed and n > 0:
        sign = "+"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            v = n / div
            return f"{sign}{v:.2f} {unit}" if v < 10 else f"{sign}{v:.1f} {unit}"
    return f"{sign}{int(n)} B"
