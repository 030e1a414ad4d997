"""The command reference (docs/cli.md), generated from the commands themselves: every command, its
arguments and every option with its help and default, as `--help` shows them. A unit test keeps the
committed page in step; regenerate it with `python -m imagegen.cli.reference > docs/cli.md`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

HEADER = """# Command reference

Every command, argument and option of `imagegen`, generated from the commands' own `--help`
(`python -m imagegen.cli.reference > docs/cli.md`; a unit test keeps this page in step with the code).
How each command works, with examples: the pages linked from the [README's command table](../README.md#commands).
Exit codes: 0 ok, 1 a failure or failed gate, 2 bad input, 3 Docker engine unreachable, 130 Ctrl-C, 143 SIGTERM.
"""


def _walk(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    """(name path, command) of every leaf command, in `--help` order (typer's vendored click: duck-typed)."""
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield path, cmd
        return
    for name, sub in subs.items():
        if not getattr(sub, "hidden", False):
            yield from _walk(sub, [*path, name])


def _name(p: Any) -> str:
    return (p.metavar or p.name or "").upper()


def _default(p: Any) -> str:
    d = p.default
    if d is None or d is False or d == () or d == [] or callable(d) or getattr(p, "is_flag", False) and not d:
        return ""
    return f"`{d}`"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def anchor(path: list[str]) -> str:
    """The GitHub anchor of a command's heading, e.g. ["imagegen", "base", "build"] -> imagegen-base-build."""
    return re.sub(r"[^a-z0-9 _-]", "", " ".join(path).lower()).replace(" ", "-")


def markdown() -> str:
    """docs/cli.md."""
    import typer

    from .app import app

    root = typer.main.get_command(app)
    out = [HEADER]
    for path, cmd in _walk(root, ["imagegen"]):
        args = [p for p in cmd.params if getattr(p, "param_type_name", "") == "argument"]
        opts = [p for p in cmd.params if getattr(p, "param_type_name", "") == "option" and not p.hidden]
        usage = " ".join(path) + (" [OPTIONS]" if opts else "") + "".join(
            f" {_name(p) if p.required else '[' + _name(p) + ']'}" + ("..." if p.nargs == -1 else "") for p in args)
        out += [f"## {' '.join(path)}", "", _cell((cmd.help or "").split("\n\n")[0]), "", "```text", usage, "```", ""]
        if args:
            out += ["| argument | meaning |", "|---|---|"]
            out += [f"| `{_name(p)}` | {_cell(p.help or '')} |" for p in args]
            out.append("")
        if opts:
            out += ["| option | meaning | default |", "|---|---|---|"]
            for p in opts:
                names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                extra = f" (env `{p.envvar}`)" if getattr(p, "envvar", None) else ""
                out.append(f"| {names} | {_cell(p.help)}{extra} | {_default(p)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    from .. import cli  # noqa: F401  (registers the commands)

    sys.stdout.write(markdown())
