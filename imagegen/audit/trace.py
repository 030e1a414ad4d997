"""`imagegen audit --trace-image IMAGE -- CMD...`: run a workload under strace and report the bytes
it never opened, per package and per category: the floor of what this workload needs.

The image may have no shell and no package manager, so the tracer brings everything it needs:
the host's strace, the shared libraries it links against and the host's dynamic loader are put
into /.imagegen-trace/ of the container (a layer on top of the image, written with put_archive
before the container starts) and strace is started through that loader, so it never uses the
image's libc. strace runs with -y, which prints the path of every file descriptor an open
returns, so relative paths and symlinks come back already resolved.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

from ..errors import EngineError, ImagegenError, UserInputError
from ..savestream.fsview import SymlinkLoop
from .categories import category_of
from .packages import UNOWNED
from .report import Analysis, display_path

PREFIX = "/.imagegen-trace"
SYSCALLS = "open,openat,openat2,execve,execveat"
NOTES = [
    "This is advice, not a deletion list: it shows what ONE run of this workload opened. Other inputs, "
    "error paths, later imports and plugins need other files. Deleting by trace (as slimtoolkit does) "
    "breaks Python and CUDA images; use the build's slimming rules instead.",
    "On a host without a GPU, lazily loaded GPU libraries (cuDNN, cuBLAS, cuFFT, NCCL, …) and the CUDA "
    "kernels inside framework libraries are never opened, so they show as untouched here although a GPU "
    "run needs them.",
    "A file counts as touched if it was opened or executed at all; its bytes are then counted whole.",
]

_RET_PATH = re.compile(r"= (\d+)<(.*)>\s*$")
_EXEC = re.compile(r'\bexecve(?:at)?\((?:[^,]*, )?"((?:[^"\\]|\\.)*)"')
_ESC = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")
_SIMPLE = {"n": b"\n", "t": b"\t", "r": b"\r", "v": b"\v", "f": b"\f", "\\": b"\\", '"': b'"'}


def _unescape(s: str) -> str:
    """strace's C-style escapes back to the path (bytes decoded as surrogateescape, like the audit)."""
    if "\\" not in s:
        return s
    out = bytearray()
    pos = 0
    for m in _ESC.finditer(s):
        out += s[pos:m.start()].encode("utf-8", "surrogateescape")
        e = m.group(1)
        if e[0] == "x" and len(e) == 3:
            out.append(int(e[1:], 16))
        elif e[0] in "01234567":
            out.append(int(e, 8) & 0xFF)
        else:
            out += _SIMPLE.get(e, e.encode())
        pos = m.end()
    out += s[pos:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def parse_trace(text: str) -> tuple[set[str], set[str]]:
    """(paths opened successfully, paths passed to execve) from strace -f -y output."""
    opened: set[str] = set()
    execs: set[str] = set()
    for line in text.splitlines():
        m = _RET_PATH.search(line)
        if m:
            opened.add(_unescape(m.group(2)))
        if "execve" in line:
            m = _EXEC.search(line)
            if m and not re.search(r"= -1 ", line):
                execs.add(_unescape(m.group(1)))
    return opened, execs


def _needed_libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
    return libs


def strace_bundle(strace: str = "/usr/bin/strace") -> bytes:
    """A tar of /.imagegen-trace/{strace,ld.so,lib/*} from the host, to put into a container."""
    if not os.path.exists(strace):
        raise UserInputError(f"{strace} not found on the host", hint="apt-get install strace")
    libs = _needed_libs(strace)
    loader = next((lib for lib in libs if "ld-linux" in os.path.basename(lib)), None)
    if loader is None:
        raise ImagegenError(f"cannot find the dynamic loader of {strace} (ldd)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("", "/lib", "/out"):
            ti = tarfile.TarInfo(PREFIX.lstrip("/") + name)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o777 if name == "/out" else 0o755
            tf.addfile(ti)
        tf.add(os.path.realpath(strace), arcname=PREFIX.lstrip("/") + "/strace", recursive=False)
        tf.add(os.path.realpath(loader), arcname=PREFIX.lstrip("/") + "/ld.so", recursive=False)
        for lib in libs:
            if lib == loader:
                continue
            tf.add(os.path.realpath(lib), arcname=f"{PREFIX.lstrip('/')}/lib/{os.path.basename(lib)}", recursive=False)
    return buf.getvalue()


@dataclass
class TraceRun:
    exit_code: int | None
    timed_out: bool
    opened: set[str]
    execs: set[str]
    logs: str
    seconds: float
    extra: dict = field(default_factory=dict)


def run_traced(image_ref: str, argv: list[str], *, timeout: float = 600, env: dict | None = None,
               user: str | None = None, workdir: str | None = None, labels: dict | None = None) -> TraceRun:
    """Run argv in a throwaway container of image_ref under strace; the container is always removed."""
    import docker.errors
    import requests.exceptions

    from .. import engine

    if not argv:
        raise UserInputError("--trace-image needs a command to run: imagegen audit --trace-image IMAGE -- CMD ...")
    api = engine.api()
    bundle = strace_bundle()
    cmd = [f"{PREFIX}/ld.so", "--library-path", f"{PREFIX}/lib", f"{PREFIX}/strace", "-f", "-qq", "-y",
           "-s", "4096", "-e", f"trace={SYSCALLS}", "-o", f"{PREFIX}/out/trace", "--", *argv]
    cid = None
    t0 = time.monotonic()
    try:
        try:
            host = api.create_host_config(cap_add=["SYS_PTRACE"], security_opt=["seccomp=unconfined"])
            cid = api.create_container(image_ref, entrypoint=cmd[:1], command=cmd[1:], environment=env,
                                       user=user or "", working_dir=workdir, host_config=host,
                                       labels={"imagegen.audit.trace": "1", **(labels or {})})["Id"]
            api.put_archive(cid, "/", bundle)
            api.start(cid)
            timed_out = False
            try:
                status = api.wait(cid, timeout=timeout)
                code = status.get("StatusCode")
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                code = None
                api.kill(cid)
                api.wait(cid, timeout=60)
            logs = api.logs(cid, stdout=True, stderr=True, tail=50).decode("utf-8", "replace")
            try:
                stream, _ = api.get_archive(cid, f"{PREFIX}/out/trace")
            except docker.errors.NotFound:
                raise ImagegenError(f"strace wrote no trace in {image_ref} (exit {code}): "
                                    f"{' '.join(logs.split())[-200:]}") from None
            raw = b"".join(stream)
            with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                member = tf.next()
                text = tf.extractfile(member).read().decode("utf-8", "surrogateescape") if member else ""
        except docker.errors.ImageNotFound:
            raise UserInputError(f"image not found in the local engine: {image_ref}") from None
        except docker.errors.APIError as exc:
            raise EngineError(f"engine refused the trace run of {image_ref}: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    finally:
        if cid is not None:
            try:
                api.remove_container(cid, force=True)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
    opened, execs = parse_trace(text)
    return TraceRun(code, timed_out, opened, execs, logs, time.monotonic() - t0)


def trace_report(a: Analysis, run: TraceRun, *, argv: list[str], top: int = 20) -> dict:
    view = a.view
    touched: set[str] = set()
    for p in run.opened | run.execs:
        if p.startswith(PREFIX + "/") or p.startswith(("/proc/", "/dev/", "/sys/")):
            continue
        try:
            touched.add(view.resolve(p))
        except SymlinkLoop:
            continue
    if run.execs:  # the kernel maps ELF interpreters without an open() strace could see
        for ld in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2"):
            try:
                touched.add(view.resolve(ld))
            except SymlinkLoop:
                pass
    # hard links: touching either name touches the content
    for rec in list(view.index.values()):
        if getattr(rec, "kind", None) == "h" and (rec.path in touched or rec.link in touched):
            touched.add(rec.path)
            touched.add(rec.link)
    owner = a.own.owner
    cat = defaultdict(lambda: [0, 0, 0, 0])  # bytes, touched bytes, files, touched files
    pkg = defaultdict(lambda: [0, 0, 0, 0])
    untouched_top: list[tuple[int, str]] = []
    tot = [0, 0, 0, 0]
    for rec in view.files():
        t = rec.path in touched
        for book in (cat[category_of(rec.path)], pkg[owner.get(rec.path, UNOWNED)], tot):
            book[0] += rec.size
            book[2] += 1
            if t:
                book[1] += rec.size
                book[3] += 1
        if not t:
            untouched_top.append((rec.size, rec.path))
    untouched_top.sort(reverse=True)

    def rows(d):
        return sorted(({"name": k, "bytes": v[0], "touched": v[1], "untouched": v[0] - v[1], "files": v[2],
                        "touched_files": v[3]} for k, v in d.items()), key=lambda r: -r["untouched"])

    return {
        "schema": "imagegen.audit/1/trace",
        "image": a.report["image"], "argv": argv, "exit_code": run.exit_code, "timed_out": run.timed_out,
        "seconds": round(run.seconds, 2),
        "totals": {"bytes": tot[0], "touched": tot[1], "untouched": tot[0] - tot[1], "files": tot[2],
                   "touched_files": tot[3]},
        "by_category": rows(cat), "by_package": rows(pkg),
        "top_untouched": [{"path": display_path(p), "bytes": b} for b, p in untouched_top[:top]],
        "touched_paths": sorted(display_path(p) for p in touched if p in view.index)[:5000],
        "notes": NOTES,
        "workload_log_tail": run.logs[-2000:],
    }


def trace(image_ref: str, argv: list[str], *, timeout: float = 600, env: dict | None = None,
          user: str | None = None, top: int = 20, analysis: Analysis | None = None,
          labels: dict | None = None) -> dict:
    """Library entry point: audit image_ref, run argv in it under strace, and report what was never
    opened. Returns the trace report dict (see docs/audit.md)."""
    from .core import audit

    a = analysis or audit(image_ref, compressed=False, top=top)
    run = run_traced(image_ref, argv, timeout=timeout, env=env, user=user, labels=labels)
    return trace_report(a, run, argv=argv, top=top)


def print_trace(rep: dict, console, *, top: int = 20) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..units import format_size as human

    t = rep["totals"]
    console.print(Text(f"trace of {' '.join(rep['argv'])} in {rep['image']}", style="bold"))
    status = "timed out" if rep["timed_out"] else f"exit code {rep['exit_code']}"
    console.print(f"workload {status} after {rep['seconds']} s; opened {t['touched_files']} of {t['files']} files: "
                  f"{human(t['touched'])} touched, {human(t['untouched'])} never touched", markup=False)
    for title, key in (("Never touched, by category", "by_category"), (f"Never touched, by package (top {top})",
                                                                        "by_package")):
        tb = Table(title=title, title_justify="left", title_style="bold", show_edge=False)
        for col, j in (("name", "left"), ("bytes", "right"), ("touched", "right"), ("untouched", "right"),
                       ("files touched", "right")):
            tb.add_column(col, justify=j)
        for r in rep[key][:top if key == "by_package" else None]:
            tb.add_row(r["name"], human(r["bytes"]), human(r["touched"]), human(r["untouched"]),
                       f"{r['touched_files']}/{r['files']}")
        console.print(tb)
        console.print()
    for n in rep["notes"]:
        console.print(Text(f"note: {n}", style="yellow"))
