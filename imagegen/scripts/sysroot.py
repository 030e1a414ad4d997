#!/usr/bin/env python3
"""Assemble a sysroot of the Debian packages a runtime base lacks.

Runs inside a Debian builder-like stage (apt, dpkg, python3; stdlib only):

    python3 sysroot.py --packages closure.txt --base-status /tmp/base-status --out /sysroot

* ``closure.txt``: package names, one a line (``#`` comments allowed), as computed by
  ``imagegen.closure`` on the host.
* ``/tmp/base-status``: the runtime base's ``/var/lib/dpkg/status``
  (``COPY --from=<runtime> /var/lib/dpkg/status /tmp/base-status``).

apt resolves the listed packages and their Depends/Pre-Depends against the *base's* status (its
own lists and caches live in a scratch directory, never in the sysroot), so exactly the packages
the base lacks are downloaded. Each is unpacked into the sysroot without running maintainer
scripts, without docs/man pages/locales (each package's copyright file is kept), and with the
merged-/usr layout (``/lib/x`` is written as ``/usr/lib/x``, symlinks re-pointed) so that the
result lands in the same place on a base with either layout and never depends on how a builder's
COPY treats a directory copied onto the base's ``/lib -> usr/lib`` symlink (Docker 20.10's classic
builder follows the symlink; other builders need not). ``<out>/var/lib/dpkg/status`` is written as the base's status plus one paragraph per
added package (``Status: install ok installed``), and ``var/lib/dpkg/info/<pkg>.list`` and
``.md5sums`` for them, so scanners see every package present. With nothing to add, the sysroot
holds just the status file.

Exit codes: 0 done, 2 bad input, 1 apt/dpkg failure. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libo32")
DROP_PREFIXES = (
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/linda/",
    "usr/share/doc-base/",
    "usr/share/bug/",
)
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$")


class Failure(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def log(msg: str) -> None:
    print(f"sysroot: {msg}", file=sys.stderr, flush=True)


# --- dpkg status ---------------------------------------------------------------------------------


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def field(paragraph: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:[ \t]*(.*)$", paragraph, re.MULTILINE | re.IGNORECASE)
    return m.group(1).strip() if m else None


def installed(status_text: str) -> set[str]:
    """Names (and name:arch) of the packages a status file lists as installed."""
    out = set()
    for p in paragraphs(status_text):
        name, st = field(p, "Package"), field(p, "Status") or ""
        if name and st.endswith(" installed"):
            out.add(name)
            arch = field(p, "Architecture")
            if arch:
                out.add(f"{name}:{arch}")
    return out


def status_paragraph(control: str) -> str:
    """A .deb's control file as a dpkg status paragraph (Status after Package, as dpkg writes)."""
    lines = [ln for ln in control.strip("\n").split("\n") if not ln.lower().startswith("status:")]
    out = []
    for ln in lines:
        out.append(ln)
        if ln.lower().startswith("package:"):
            out.append("Status: install ok installed")
    return "\n".join(out)


# --- apt -----------------------------------------------------------------------------------------


def apt_options(work: Path, base_status: Path, private_lists: bool) -> list[str]:
    opts = {
        "Dir::State::status": str(base_status),
        **({"Dir::State::Lists": str(work / "lists")} if private_lists else {}),
        "Dir::State::extended_states": str(work / "extended_states"),
        "Dir::Cache": str(work / "cache"),
        "Dir::Cache::archives": str(work / "archives"),
        "APT::Install-Recommends": "false",
        "APT::Install-Suggests": "false",
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
        "Debug::NoLocking": "true",
        "quiet": "1",
    }
    out: list[str] = []
    for k, v in opts.items():
        out += ["-o", f"{k}={v}"]
    return out


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("E:", "dpkg-deb:"))] or lines[-1:] or ["(no output)"]
        raise Failure(f"{what} failed: {' / '.join(errs[:3])}")
    return res


def download(packages: list[str], base_status: Path, work: Path, update: bool) -> list[Path]:
    for d in ("lists/partial", "cache", "archives/partial"):
        (work / d).mkdir(parents=True, exist_ok=True)
    opts = apt_options(work, base_status, private_lists=update)
    if update:
        log("apt-get update")
        run(["apt-get", *opts, "update"], "apt-get update")
    log(f"resolving {' '.join(packages)} against the base's status")
    run(
        ["apt-get", *opts, "install", "--download-only", "--yes", "--no-install-recommends", *packages],
        "apt-get install --download-only",
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return sorted((work / "archives").glob("*.deb"))


# --- unpacking -----------------------------------------------------------------------------------


def canonical(path: str, merged: bool) -> str:
    """A package path (no leading slash) in the merged-/usr layout."""
    if merged:
        head = path.split("/", 1)[0]
        if head in MERGED_DIRS:
            return f"usr/{path}"
    return path


def dropped(path: str, keep_docs: bool) -> bool:
    if keep_docs or not path.startswith(DROP_PREFIXES):
        return False
    parts = path.split("/")
    # keep usr/share/doc/<pkg>/copyright (licence compliance)
    return not (path.startswith("usr/share/doc/") and len(parts) == 5 and parts[4] == "copyright")


def relink(link: str, target: str, merged: bool) -> str:
    """A symlink's target after moving the link from `link` to canonical(link)."""
    if target.startswith("/"):
        return "/" + canonical(target.lstrip("/"), merged)
    old_dir = posixpath.dirname("/" + link)
    absolute = posixpath.normpath(posixpath.join(old_dir, target)).lstrip("/")
    new_abs = canonical(absolute, merged)
    new_dir = posixpath.dirname("/" + canonical(link, merged))
    if new_abs == absolute and new_dir == old_dir:
        return target
    return posixpath.relpath("/" + new_abs, new_dir)


def unpack(deb: Path, out: Path, merged: bool, keep_docs: bool, owners: dict[str, str], pkg: str) -> list[str]:
    """Unpack one .deb into `out`. Returns the kept paths (canonical, no leading slash)."""
    kept: list[str] = []
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    is_root = os.geteuid() == 0
    later: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for m in tf:
                name = posixpath.normpath(m.name).lstrip("/")
                if name in (".", "") or name.startswith("../"):
                    continue
                if dropped(name, keep_docs):
                    continue
                rel = canonical(name, merged)
                dest = out / rel
                if m.isdir():
                    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                        raise Failure(f"{deb.name}: directory /{rel} clashes with a file")
                    dest.mkdir(parents=True, exist_ok=True)
                    later.append((dest, m))  # set directory modes/mtimes after their contents
                    kept.append(rel)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(dest):
                    if m.issym() and dest.is_symlink() and os.readlink(dest) == relink(name, m.linkname, merged):
                        continue  # the same link shipped twice (layout aliases)
                    raise Failure(f"{deb.name}: /{rel} is also shipped by {owners.get(rel, 'another package')}")
                if m.issym():
                    os.symlink(relink(name, m.linkname, merged), dest)
                elif m.islnk():
                    src = out / canonical(posixpath.normpath(m.linkname).lstrip("/"), merged)
                    os.link(src, dest)
                elif m.isreg():
                    src_fh = tf.extractfile(m)
                    assert src_fh is not None
                    with open(dest, "wb") as fh:
                        shutil.copyfileobj(src_fh, fh, 1 << 20)
                else:
                    raise Failure(f"{deb.name}: unsupported member type for /{name}")
                if not m.issym():
                    os.chmod(dest, stat.S_IMODE(m.mode))
                if is_root:
                    os.chown(dest, m.uid, m.gid, follow_symlinks=False)
                os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)
                owners[rel] = pkg
                kept.append(rel)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0:
        raise Failure(f"dpkg-deb --fsys-tarfile {deb.name} failed: {err.strip().splitlines()[-1:] or rc}")
    for dest, m in later:
        os.chmod(dest, stat.S_IMODE(m.mode))
        if is_root:
            os.chown(dest, m.uid, m.gid)
        os.utime(dest, (m.mtime, m.mtime))
    return kept


def control_files(deb: Path, work: Path) -> tuple[str, dict[str, str]]:
    """The control paragraph and the md5sums (path -> md5) of a .deb."""
    control = run(["dpkg-deb", "--field", str(deb)], f"dpkg-deb --field {deb.name}").stdout
    tmp = Path(tempfile.mkdtemp(dir=work))
    run(["dpkg-deb", "--control", str(deb), str(tmp)], f"dpkg-deb --control {deb.name}")
    sums: dict[str, str] = {}
    if (tmp / "md5sums").is_file():
        for line in (tmp / "md5sums").read_text(errors="replace").splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                sums[parts[1].strip().lstrip("/")] = parts[0]
    shutil.rmtree(tmp)
    return control, sums


# --- main ----------------------------------------------------------------------------------------


def read_packages(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror}", 2) from None
    names = []
    for ln in text.splitlines():
        ln = ln.split("#", 1)[0].strip()
        if not ln:
            continue
        if not PACKAGE_RE.match(ln):
            raise Failure(f"{path}: not a Debian package name: {ln!r}", 2)
        names.append(ln)
    return sorted(set(names))


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    base_status = Path(args.base_status)
    try:
        base_text = base_status.read_text()
    except OSError as exc:
        raise Failure(f"cannot read the base status {base_status}: {exc.strerror}", 2) from None
    have = installed(base_text)
    if not have:
        raise Failure(f"{base_status} lists no installed package: not a dpkg status file", 2)
    wanted = read_packages(Path(args.packages))
    if out.exists() and any(out.iterdir()):
        raise Failure(f"{out} exists and is not empty", 2)
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in wanted if p not in have]
    added: list[tuple[str, str, str, list[str], dict[str, str]]] = []  # name, list-name, paragraph, files, sums
    if todo:
        work = Path(tempfile.mkdtemp(prefix="sysroot-apt-"))
        try:
            debs = download(todo, base_status, work, update=not args.no_update)
            owners: dict[str, str] = {}
            for deb in debs:
                control, sums = control_files(deb, work)
                name, arch = field(control, "Package") or deb.name, field(control, "Architecture") or ""
                if name in have:
                    continue  # apt would not download it, but never duplicate a base package
                files = unpack(deb, out, not args.keep_layout, args.keep_docs, owners, name)
                multi = (field(control, "Multi-Arch") or "") == "same"
                list_name = f"{name}:{arch}" if multi and arch else name
                added.append((name, list_name, status_paragraph(control), files, sums))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    info = out / "var/lib/dpkg/info"
    info.mkdir(parents=True, exist_ok=True)
    for _name, list_name, _, files, sums in added:
        listed = sorted({"/" + f for f in files} | {"/."})
        (info / f"{list_name}.list").write_text("".join(f"{p}\n" for p in listed))
        kept = set(files)
        original = {canonical(k, not args.keep_layout): v for k, v in sums.items()}
        lines = [f"{v}  {k}\n" for k, v in sorted(original.items()) if k in kept]
        if lines:
            (info / f"{list_name}.md5sums").write_text("".join(lines))
    added.sort(key=lambda a: a[0])
    status = "\n\n".join([*paragraphs(base_text), *(a[2] for a in added)]) + "\n"
    (out / "var/lib/dpkg/status").write_text(status)
    for leftover in ("var/lib/apt", "var/cache/apt"):
        if (out / leftover).exists():
            shutil.rmtree(out / leftover)
    total = sum(f.lstat().st_size for f in out.rglob("*") if f.is_file() and not f.is_symlink())
    names = " ".join(a[0] for a in added) or "nothing"
    print(f"sysroot: added {len(added)} package(s), {total / 1e6:.1f} MB: {names}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", required=True, help="package list file (closure.txt)")
    ap.add_argument("--base-status", required=True, help="the runtime base's /var/lib/dpkg/status")
    ap.add_argument("--out", default="/sysroot", help="sysroot directory to create (default /sysroot)")
    ap.add_argument("--no-update", action="store_true", help="do not run apt-get update (use the stage's lists)")
    ap.add_argument("--keep-docs", action="store_true", help="keep docs, man pages and locales")
    ap.add_argument("--keep-layout", action="store_true", help="keep /lib, /bin ... as packaged (no merged-/usr)")
    args = ap.parse_args(argv)
    try:
        return build(args)
    except Failure as exc:
        print(f"sysroot: error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
