"""Paths a user passes on the command line, checked before any work starts.

Each check raises imagegen.errors.UserInputError (one line, exit 2) and writes nothing that stays:
output checks prove the place is writable by creating and removing a probe, which catches what
permission bits do not (root on /proc, read-only mounts, a file where a directory must be).

The CLI attaches them to options as typer callbacks (`callback=userpaths.output_dir`), so they run
while the command line is parsed, before the command body; `CHECKS` names them for the test that
walks every path option of every command.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Optional, Union

import typer

from ..errors import UserInputError
from ..userfiles import check_regular_file

PathArg = Union[Path, str, None]


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _probe(directory: Path, shown: Path) -> None:
    """Create and remove a temporary directory in `directory`: proves we can create entries there."""
    try:
        tmp = tempfile.mkdtemp(prefix=".imagegen-probe-", dir=directory)
    except OSError as exc:
        raise UserInputError(f"{shown}: cannot create files in {directory} ({exc.strerror or exc})") from None
    os.rmdir(tmp)


def _creatable(path: Path) -> None:
    """`path` does not exist: its nearest existing ancestor must be a directory we can write in
    (the missing folders in between are created when the output is written)."""
    anc = _nearest_existing(path)
    if not anc.is_dir():
        raise UserInputError(f"{path}: {anc} is not a directory")
    _probe(anc, path)


def check_output_file(path: PathArg) -> Optional[Path]:
    """A file the command will write (replacing it if it exists). None passes through."""
    if path is None:
        return None
    path = Path(path)
    if str(path) == "":
        raise UserInputError("an empty output path")
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory; give a file name")
    if os.path.lexists(path):
        try:
            st = path.stat()
        except OSError as exc:
            raise UserInputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):  # /dev/null, /dev/stdout are fine
            raise UserInputError(f"{path}: not a regular file; give a file name")
        try:
            with open(path, "ab"):  # no truncation, no change to its bytes
                pass
        except OSError as exc:
            raise UserInputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        return path
    _creatable(path)
    return path


def check_output_dir(path: PathArg) -> Optional[Path]:
    """A directory the command will write files into (created if missing). None passes through."""
    if path is None:
        return None
    path = Path(path)
    if str(path) == "":
        raise UserInputError("an empty output path")
    if os.path.lexists(path):
        if not path.is_dir():
            raise UserInputError(f"{path}: exists and is not a directory")
        _probe(path, path)
        return path
    _creatable(path)
    return path


def check_output_file_or_dir(path: PathArg) -> Optional[Path]:
    """`*.xml`-style outputs that also accept a directory: a directory when it exists as one or has
    no file suffix, else a file."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir() or (not os.path.lexists(path) and not path.suffix):
        return check_output_dir(path)
    return check_output_file(path)


def check_input_file(path: PathArg) -> Optional[Path]:
    """A file the command reads: it must exist, be a regular file and be readable."""
    if path is None:
        return None
    path = Path(path)
    check_regular_file(path)
    if not os.access(path, os.R_OK):
        raise UserInputError(f"{path}: cannot read: permission denied")
    return path


def check_input_files_or_dirs(paths: Optional[list]) -> Optional[list]:
    """Files or directories the command reads (e.g. lock files): each must exist and be readable."""
    if not paths:
        return paths
    for p in paths:
        p = Path(p)
        if not os.path.lexists(p):
            raise UserInputError(f"{p}: no such file or directory")
        if p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                raise UserInputError(f"{p}: cannot read: permission denied")
        else:
            check_input_file(p)
    return paths


# typer callbacks: typer passes the option (for its name) and the value
def _named(check):
    def callback(param: typer.CallbackParam, value):
        try:
            return check(value)
        except UserInputError as exc:
            opt = (param.opts or [param.name or "path"])[0] if param is not None else "path"
            name = opt if opt.startswith("-") else opt.upper()
            raise UserInputError(f"{name} {exc}") from None

    callback.__name__ = check.__name__.replace("check_", "")
    callback.__doc__ = check.__doc__
    return callback


output_file = _named(check_output_file)
output_dir = _named(check_output_dir)
output_file_or_dir = _named(check_output_file_or_dir)
input_file = _named(check_input_file)
input_files_or_dirs = _named(check_input_files_or_dirs)


def input_file_if_named(ctx: typer.Context, param: typer.CallbackParam, value):
    """`input_file` for an option whose default file the command reads only in some of its forms (the
    matrix of `audit` and `verify`): checked when the user names it (flag or environment), else when read."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source is not None and source.name == "DEFAULT":
        return value
    return input_file(param, value)


#: kind of each callback, for the CLI-wide test: "out" options get an unwritable path, "in" a missing one
CHECKS = {output_file: "out", output_dir: "out", output_file_or_dir: "out", input_file: "in",
          input_files_or_dirs: "in", input_file_if_named: "in"}
