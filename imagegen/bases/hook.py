"""The mmdebstrap hook that finishes a base's root filesystem, and the Debian control-file logic it
needs. It runs in the host's Python under mmdebstrap (``python -m imagegen.bases --hook KIND CFG ROOT``,
see imagegen/bases/__main__.py) with the rootfs path as its argument; standard library only.

* ``runtime`` (extract variant): cut packages' files deleted, docs/man/locales dropped except
  copyright files, a consistent ``/var/lib/dpkg/status``, system files (passwd, group, nsswitch,
  CA bundle, ld.so.cache) for a root filesystem that never ran a maintainer script.
* ``minbase`` (builder/dev): the non-root user and reproducible host-derived files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ImagegenError, UserInputError

RUNTIME_USER = {"name": "app", "uid": 1000, "gid": 1000, "home": "/home/app"}

# Applied as dpkg path filters (minbase roles) and by the runtime finalizer (extract variant).
DOC_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
    "/usr/share/doc-base/*",
    "/usr/share/bug/*",
    "/usr/share/menu/*",
)
DOC_INCLUDES = ("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias")


def packages_split(packages: Iterable[str]) -> tuple[list[str], set[str]]:
    """(packages to extract/install, packages cut from a runtime's dependency walk: ``name-``)."""
    wanted, cut = [], set()
    for p in packages:
        if p.endswith("-") and len(p) > 1:
            cut.add(p[:-1])
        else:
            wanted.append(p)
    both = cut.intersection(wanted)
    if both:
        raise UserInputError(f"package(s) both listed and cut: {', '.join(sorted(both))}")
    return wanted, cut


# --- Debian control data ----------------------------------------------------------------------


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of a Debian control file; field order kept, continuation lines joined with \\n."""
    paras: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, last = {}, None
        elif line[0] in " \t" and last:
            cur[last] += "\n" + line
        elif ":" in line:
            key, value = line.split(":", 1)
            cur[key] = value.strip()
            last = key
    if cur:
        paras.append(cur)
    return paras


def format_deb822(para: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\n" if v else f"{k}:\n" for k, v in para.items())


def parse_depends(value: str) -> list[list[str]]:
    """``a (>= 1) | b:any, c`` -> [[a, b], [c]] (package names only)."""
    out = []
    for clause in value.split(","):
        alts = []
        for alt in clause.split("|"):
            name = alt.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0].strip()
            if name:
                alts.append(name)
        if alts:
            out.append(alts)
    return out


@dataclass
class Resolution:
    keep: list[str]
    dropped_clauses: dict[str, list[str]]  # package -> raw clauses whose every alternative was cut/absent


def resolve_keep(requested: Iterable[str], cut: set[str], control: dict[str, dict[str, str]]) -> Resolution:
    """Walk Pre-Depends/Depends from the requested packages over the downloaded set, never entering
    a cut package. Virtual names go to their providers."""
    providers: dict[str, list[str]] = {}
    for name, fields in sorted(control.items()):
        for prov in parse_depends(fields.get("Provides", "")):
            providers.setdefault(prov[0], []).append(name)
    keep: set[str] = set()
    dropped: dict[str, list[str]] = {}
    todo = deque(requested)
    while todo:
        pkg = todo.popleft()
        if pkg in keep:
            continue
        if pkg not in control:
            raise ImagegenError(f"package {pkg} was requested but not downloaded")
        keep.add(pkg)
        for field in ("Pre-Depends", "Depends"):
            raw = [c.strip() for c in control[pkg].get(field, "").split(",") if c.strip()]
            for clause_raw in raw:
                alts = parse_depends(clause_raw)[0]
                choice = None
                for alt in alts:
                    for cand in ([alt] if alt in control else []) + providers.get(alt, []):
                        if cand not in cut:
                            choice = cand
                            break
                    if choice:
                        break
                if choice is None:
                    dropped.setdefault(pkg, []).append(clause_raw)
                else:
                    todo.append(choice)
    return Resolution(sorted(keep), dropped)


def status_paragraph(fields: dict[str, str], keep: set[str], providers: set[str]) -> dict[str, str]:
    """A dpkg status entry for a kept package: Status added; Depends clauses none of whose
    alternatives is present are moved to Imagegen-Dropped-Depends."""
    out: dict[str, str] = {}
    dropped: list[str] = []
    present = keep | providers
    for key, value in fields.items():
        if key in ("Depends", "Pre-Depends"):
            kept_clauses = []
            for clause in (c.strip() for c in value.split(",") if c.strip()):
                if any(a in present for a in parse_depends(clause)[0]):
                    kept_clauses.append(clause)
                else:
                    dropped.append(clause)
            if kept_clauses:
                out[key] = ", ".join(kept_clauses)
        else:
            out[key] = value
        if key == "Package":
            out["Status"] = "install ok installed"
    if dropped:
        out["Imagegen-Dropped-Depends"] = ", ".join(dropped)
    return out


# --- the runtime finalizer (runs as an mmdebstrap extract hook) -------------------------------


def _deb_fields(deb: Path) -> dict[str, str]:
    text = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    return parse_deb822(text)[0]


def _deb_paths(deb: Path) -> list[tuple[str, bool]]:
    """(path without leading './', is_dir) of every member of a .deb's data tarball."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    out = []
    assert proc.stdout
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
        for m in tf:
            path = m.name[2:] if m.name.startswith("./") else m.name
            path = path.rstrip("/")
            if path and path != ".":
                out.append((path, m.isdir()))
    if proc.wait() != 0:
        raise ImagegenError(f"dpkg-deb --fsys-tarfile {deb.name} failed")
    return out


def canonical(path: str) -> str:
    """Merged-/usr: bin, sbin, lib, lib64 are links into usr/."""
    head, _, rest = path.partition("/")
    if head in ("bin", "sbin", "lib", "lib64") and rest:
        return f"usr/{head}/{rest}"
    return path


_KEEP_RE = re.compile(r"^/usr/share/doc/[^/]+/copyright$|^/usr/share/locale/locale\.alias$")


def excluded(path: str) -> bool:
    """Docs, man pages, locales... except each package's top-level copyright file (stricter than
    dpkg's fnmatch, whose ``*`` also matches ``/``)."""
    import fnmatch

    p = "/" + path
    if _KEEP_RE.match(p):
        return False
    return any(fnmatch.fnmatchcase(p, g) or p == g[:-2] for g in DOC_EXCLUDES)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def finalize_runtime(root: Path, cfg: dict) -> None:
    """Turn an extracted package set into the runtime rootfs (see module docstring)."""
    archives = root / "var/cache/apt/archives"
    debs = sorted(archives.glob("*.deb"))
    control: dict[str, dict[str, str]] = {}
    paths: dict[str, list[tuple[str, bool]]] = {}
    for deb in debs:
        fields = _deb_fields(deb)
        control[fields["Package"]] = fields
        paths[fields["Package"]] = _deb_paths(deb)
    wanted, cut = packages_split(cfg["packages"])
    res = resolve_keep(wanted, cut, control)
    keep = set(res.keep)

    owned_files, owned_dirs = set(), set()
    for pkg in keep:
        for p, is_dir in paths[pkg]:
            (owned_dirs if is_dir else owned_files).add(canonical(p))
    for pkg in sorted(set(control) - keep):
        dirs = []
        for p, is_dir in paths[pkg]:
            c = canonical(p)
            if is_dir:
                if c not in owned_dirs:
                    dirs.append(c)
            elif c not in owned_files and os.path.lexists(root / c):
                (root / c).unlink()
        for d in sorted(dirs, key=lambda s: s.count("/"), reverse=True):
            with contextlib.suppress(OSError):
                (root / d).rmdir()

    # docs, man pages, locales: keep /usr/share/doc/*/copyright
    for top in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
                "usr/share/linda", "usr/share/doc-base", "usr/share/bug", "usr/share/menu"):
        base = root / top
        if not base.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                full = Path(dirpath) / name
                if excluded(str(full.relative_to(root))):
                    full.unlink()
            for d in dirnames:
                full = Path(dirpath) / d
                if not full.is_symlink():
                    with contextlib.suppress(OSError):
                        full.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()

    # apt/dpkg machinery that has no use without apt and dpkg
    for rel in ("etc/apt", "var/lib/apt", "var/cache/apt", "var/log/apt", "var/cache/debconf", "var/lib/dpkg",
                "etc/dpkg", "etc/resolv.conf", "etc/hostname", "var/cache/ldconfig", "var/log"):
        p = root / rel
        if os.path.lexists(p):
            _remove(p)

    _runtime_system_files(root, cfg)

    # dpkg database: status + info/<pkg>.list of the kept packages
    dpkg = root / "var/lib/dpkg"
    (dpkg / "info").mkdir(parents=True, exist_ok=True)
    provided = {prov[0] for p in keep for prov in parse_depends(control[p].get("Provides", ""))}
    with open(dpkg / "status", "w") as fh:
        for pkg in sorted(keep):
            fh.write(format_deb822(status_paragraph(control[pkg], keep, provided)) + "\n")
    for pkg in sorted(keep):
        fields = control[pkg]
        listname = f"{pkg}:{fields['Architecture']}" if fields.get("Multi-Arch") == "same" else pkg
        lines = ["/."] + [f"/{p}" for p, _ in paths[pkg] if os.path.lexists(root / p)]
        (dpkg / "info" / f"{listname}.list").write_text("\n".join(lines) + "\n")

    # ld.so.cache, built by the image's own ldconfig
    subprocess.run(["chroot", str(root), "/sbin/ldconfig"], check=True)
    shutil.rmtree(root / "var/cache/ldconfig", ignore_errors=True)
    summary = {"kept": res.keep, "removed": sorted(set(control) - keep), "dropped_depends": res.dropped_clauses}
    Path(cfg["summary"]).write_text(json.dumps(summary, indent=1))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _symlink(target: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    link.symlink_to(target)


def _runtime_system_files(root: Path, cfg: dict) -> None:
    u = RUNTIME_USER
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\n"
           f"{u['name']}:x:{u['uid']}:{u['gid']}:{u['name']}:{u['home']}:/sbin/nologin\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    _write(root / "etc/group", f"root:x:0:\n{u['name']}:x:{u['gid']}:\nnogroup:x:65534:\n")
    _write(root / "etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
           "networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n")
    _write(root / "etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d").mkdir(exist_ok=True)
    for rel, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700)):
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)
    home = root / u["home"].lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    os.chown(home, u["uid"], u["gid"])
    # CA bundle as update-ca-certificates would write it (its postinst never runs in an extract)
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"), key=lambda p: str(p.relative_to(root)))
    bundle = "".join(p.read_text().rstrip("\n") + "\n" for p in certs)
    _write(root / "etc/ssl/certs/ca-certificates.crt", bundle)
    _write(root / "etc/ca-certificates.conf", "".join(
        str(p.relative_to(root / "usr/share/ca-certificates")) + "\n" for p in certs))
    _symlink("/etc/ssl/certs/ca-certificates.crt", root / "usr/lib/ssl/cert.pem")
    _symlink("/etc/ssl/certs", root / "usr/lib/ssl/certs")
    _symlink(f"python{cfg['python']}", root / "usr/bin/python3")
    if (root / "usr/share/zoneinfo/Etc/UTC").exists():
        _symlink("/usr/share/zoneinfo/Etc/UTC", root / "etc/localtime")
        _write(root / "etc/timezone", "Etc/UTC\n")


def finalize_minbase(root: Path, cfg: dict) -> None:
    """builder/dev: the non-root user, reproducible host-derived files."""
    u = RUNTIME_USER
    passwd = (root / "etc/passwd").read_text()
    if f"\n{u['name']}:" not in "\n" + passwd:
        shell = "/bin/bash" if (root / "usr/bin/bash").exists() else "/bin/sh"
        with open(root / "etc/passwd", "a") as fh:
            fh.write(f"{u['name']}:x:{u['uid']}:{u['gid']}:{u['name']}:{u['home']}:{shell}\n")
        with open(root / "etc/group", "a") as fh:
            fh.write(f"{u['name']}:x:{u['gid']}:\n")
        days = int(cfg["epoch"]) // 86400
        for name, line in (("shadow", f"{u['name']}:!:{days}:0:99999:7:::\n"), ("gshadow", f"{u['name']}:!::\n")):
            p = root / "etc" / name
            if p.exists():
                with open(p, "a") as fh:
                    fh.write(line)
        home = root / u["home"].lstrip("/")
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, u["uid"], u["gid"])
    for rel in ("etc/resolv.conf", "etc/hostname"):
        if os.path.lexists(root / rel):
            (root / rel).unlink()
    if not (root / "usr/bin/python3").exists():
        _symlink(f"python{cfg['python']}", root / "usr/bin/python3")


def main(argv: list[str]) -> int:
    """KIND CFG_JSON ROOT -> exit status."""
    kind, cfg_path, root = argv
    cfg = json.loads(Path(cfg_path).read_text())
    if kind == "runtime":
        finalize_runtime(Path(root), cfg)
    elif kind == "minbase":
        finalize_minbase(Path(root), cfg)
    else:
        print(f"unknown hook {kind}", file=sys.stderr)
        return 2
    return 0
