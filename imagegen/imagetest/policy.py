"""Contents policy over an image inventory (pure functions, no engine).

Each rule returns the offending paths (sorted, capped by the caller when reported). A rule only
looks at the image's own filesystem, so a test-only helper mounted into a test container can
never satisfy or break it.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Sequence

from ..scripts.elfmini import strip_hazard
from .inventory import ELF, ELF_PATCHED, ELF_SYMTAB, T, resolve

Files = dict[str, list]

SHELLS = ("bin/sh", "bin/bash", "bin/dash", "bin/ash", "bin/busybox", "bin/zsh",
          "usr/bin/sh", "usr/bin/bash", "usr/bin/dash", "usr/bin/busybox", "usr/bin/zsh")
HEADER_SUFFIXES = (".h", ".hh", ".hpp", ".hxx", ".cuh")
_SITE = re.compile(r"(^|/)(site|dist)-packages/")
_STDLIB_OS = re.compile(r"^(?:.*/)?lib/python(\d+\.\d+)/os\.py$")


def _allowed(path: str, allow: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, pat) or fnmatch.fnmatch("/" + path, pat) for pat in allow)


def docs(files: Files, allow: Sequence[str] = ()) -> list[str]:
    """Files under /usr/share/doc other than copyright files."""
    out = []
    for p, e in files.items():
        if p.startswith("usr/share/doc/") and e[T] != "d" and posixpath.basename(p) != "copyright":
            out.append(p)
    return sorted(x for x in out if not _allowed(x, allow))


def man(files: Files, allow: Sequence[str] = ()) -> list[str]:
    out = [p for p, e in files.items() if e[T] != "d" and p.startswith(("usr/share/man/", "usr/share/info/", "usr/local/share/man/"))]
    return sorted(x for x in out if not _allowed(x, allow))


def tests_dirs(files: Files, allow: Sequence[str] = ()) -> list[str]:
    """Directories named tests/ or test/ inside site-packages or dist-packages."""
    out = set()
    for p, e in files.items():
        m = _SITE.search(p)
        if not m:
            continue
        rel = p[m.end():].split("/")
        dirs = rel if e[T] == "d" else rel[:-1]
        for i, part in enumerate(dirs):
            if part.endswith(".dist-info"):
                break  # license trees of vendored projects (torch's licenses/third_party/*/test)
            if part in ("tests", "test"):
                out.add(p[: m.end()] + "/".join(rel[: i + 1]))
                break
    return sorted(x for x in out if not _allowed(x, allow))


def headers(files: Files, allow: Sequence[str] = ()) -> list[str]:
    out = [p for p, e in files.items() if e[T] in ("f", "h") and p.endswith(HEADER_SUFFIXES)]
    return sorted(x for x in out if not _allowed(x, allow))


def pkg_caches(files: Files, allow: Sequence[str] = ()) -> list[str]:
    out = []
    for p, e in files.items():
        if e[T] == "d":
            continue
        if "/.cache/pip/" in "/" + p or p.startswith(("var/cache/pip/",)):
            out.append(p)
        elif p.startswith("var/cache/apt/") and (p.endswith(".bin") or p.endswith(".deb")):
            out.append(p)
    return sorted(x for x in out if not _allowed(x, allow))


def apt_lists(files: Files, allow: Sequence[str] = ()) -> list[str]:
    out = [p for p, e in files.items() if p.startswith("var/lib/apt/lists/") and e[T] != "d"
           and posixpath.basename(p) != "lock"]
    return sorted(x for x in out if not _allowed(x, allow))


def unstripped(files: Files, allow: Sequence[str] = ()) -> list[str]:
    """ELF objects that still carry a symbol table, except those `strip` must not touch
    (`imagegen.scripts.elfmini.strip_hazard`: auditwheel's `<pkg>.libs/` copies and files in
    patchelf's layout; stripping those corrupts them)."""
    out = []
    for p, e in files.items():
        if e[T] == "f" and e[ELF] in (ELF_SYMTAB, ELF_PATCHED):
            # the one strip predicate (shared with the prune rule and the audit's suggestion)
            if strip_hazard(p, (), patchelf_layout=e[ELF] == ELF_PATCHED):
                continue
            out.append(p)
    return sorted(x for x in out if not _allowed(x, allow))


def shells(files: Files, allow: Sequence[str] = ()) -> list[str]:
    seen: dict[str, str] = {}  # resolved target -> first name that reaches it
    for p in SHELLS:
        real = resolve(files, p)
        if real and real not in seen:
            seen[real] = p
    out = sorted(seen.values())
    return sorted(x for x in out if not _allowed(x, allow))


def pip(files: Files, allow: Sequence[str] = ()) -> list[str]:
    out = set()
    for p in files:
        m = _SITE.search(p)
        if m and p[m.end():].split("/")[0] in ("pip",):
            out.add(p[: m.end()] + "pip")
    return sorted(x for x in out if not _allowed(x, allow))


def pythons(files: Files, allow: Sequence[str] = ()) -> list[str]:
    """Python installations = standard libraries (lib/pythonX.Y/os.py). A venv has none."""
    out = []
    for p, e in files.items():
        if e[T] in ("f", "h") and _STDLIB_OS.match(p) and "site-packages" not in p:
            out.append(p)
    return sorted(x for x in out if not _allowed(x, allow))


def second_python(files: Files, allow: Sequence[str] = ()) -> list[str]:
    found = pythons(files, allow)
    return found if len(found) > 1 else []


# rule name -> (function, what the offenders are)
RULES: dict[str, tuple[Callable[..., list[str]], str]] = {
    "no_docs": (docs, "documentation files"),
    "no_man": (man, "man/info pages"),
    "no_tests_dirs": (tests_dirs, "tests directories in site-packages"),
    "no_headers": (headers, "header files"),
    "no_pkg_caches": (pkg_caches, "pip/apt cache files"),
    "no_apt_lists": (apt_lists, "apt list files"),
    "stripped": (unstripped, "unstripped ELF objects"),
    "no_shell": (shells, "shells"),
    "no_pip": (pip, "pip installations"),
    "single_python": (second_python, "Python standard libraries (more than one installation)"),
}


def describe(offenders: list[str], what: str, limit: int = 5) -> str:
    shown = ", ".join("/" + p for p in offenders[:limit])
    more = f" (+{len(offenders) - limit} more)" if len(offenders) > limit else ""
    return f"{len(offenders)} {what}: {shown}{more}"
