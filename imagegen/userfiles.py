"""Files a user names: the one check that a path is an existing, readable regular file.

Shared by the YAML loader (`yamlsrc.load`) and the CLI's path options (`cli.userpaths`), so a
directory, a device, a pipe or a missing file gets the same one-line error everywhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UserInputError


def check_regular_file(path: str | os.PathLike, noun: str = "file", hint: str = "") -> os.stat_result:
    """`path`'s stat result when it is an existing regular file. Raises UserInputError (one line:
    "<path>: no such file", "cannot read: ...", "is a directory, not a <noun>", "not a regular
    file<hint>"). Readability is checked by whoever opens it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserInputError(f"{path}: is a directory, not a {noun}")
    if not stat.S_ISREG(st.st_mode):
        raise UserInputError(f"{path}: not a regular file{hint}")
    return st
