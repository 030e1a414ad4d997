"""Byte counts for humans and from humans: the one size parser and formatter.

Decimal units (kB, MB, GB, TB) are powers of 1000, as `docker images` prints them; binary units
(KiB, MiB, GiB, TiB) are powers of 1024 and are accepted on input only. Output is always decimal
with a lowercase "kB".
"""

from __future__ import annotations

import re

from .errors import UserInputError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_RX = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


class SizeError(UserInputError, ValueError):
    """Not a size. A UserInputError (exit 2) and a ValueError (pydantic validators report it)."""


def parse_size(value: str | int, *, what: str = "") -> int:
    """'800MB' -> 800000000, '4.5GB' -> 4500000000, '2GiB' -> 2147483648, '123' or 123 -> 123.

    Raises SizeError naming ``value`` (and ``what``, e.g. "--max-size", when given)."""
    if isinstance(value, bool):
        raise SizeError(f"'{value}' is not a size{f' for {what}' if what else ''} (examples: 800MB, 4.5GB, 2GiB)")
    if isinstance(value, int):
        return value
    m = _RX.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise SizeError(f"'{value}' is not a size{f' for {what}' if what else ''} (examples: 800MB, 4.5GB, 2GiB)")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def format_size(n: int | float | None, *, signed: bool = False, missing: str = "-") -> str:
    """765_300_000 -> '765.3 MB', 4_450_000_000 -> '4.45 GB', 999 -> '999 B', None -> ``missing``.

    Two decimals below 10 of a unit, one above; ``signed`` adds '+' to positive values."""
    if n is None:
        return missing
    sign = ""
    if n < 0:
        sign, n = "-", -n
    elif signed and n > 0:
        sign = "+"
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            v = n / div
            return f"{sign}{v:.2f} {unit}" if v < 10 else f"{sign}{v:.1f} {unit}"
    return f"{sign}{int(n)} B"
