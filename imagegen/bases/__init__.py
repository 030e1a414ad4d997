"""Base images: bootstrapped from Debian packages (mmdebstrap + docker import) or pulled by digest.

A bootstrapped base gives three roles (see imagegen/data/bases.yaml):

* ``runtime``  distroless-like: ``mmdebstrap --variant=extract`` of the listed packages. apt
  resolves their hard dependencies; packages listed with a trailing ``-`` (``debconf-``) are
  *cut*: the dependency walk does not enter them, and the files of every downloaded package
  outside the walk are deleted again (they only serve maintainer scripts that never run in an
  extracted tree: dpkg, debconf, perl, awk, the openssl CLI). The kept packages are written to
  ``/var/lib/dpkg/status`` (plus ``info/<pkg>.list``), with Depends clauses on cut packages moved
  to an ``Imagegen-Dropped-Depends`` field so apt sees a consistent state when pointed at it with
  ``-o Dir::State::status=``.
* ``builder`` and ``dev``: ``minbase`` plus the listed packages, installed by dpkg, with docs, man
  pages and locales excluded by a dpkg path filter that stays in the image.

The rootfs tarball is reproducible: SOURCE_DATE_EPOCH comes from the snapshot date, or from the
``Date`` of the suite's InRelease, so the same archive state gives the same tarball bytes. Its
sha256 is recorded in the image labels. Import is atomic: the image is imported untagged, checked
(``python3`` runs, as root, uid 1000 and an arbitrary uid), then tagged; any failure or Ctrl-C
removes the untagged image and the temporary directory.

The rootfs is finished inside mmdebstrap by ``imagegen/bases/hook.py`` (run as
``python -m imagegen.bases --hook``); the commands are in ``imagegen/cli/base_cmds.py``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import compat, flock, labels, paths
from ..console import log
from ..errors import EngineError, ImagegenError, UserInputError
from ..signals import sigterm_as_interrupt
from .hook import DOC_EXCLUDES, DOC_INCLUDES, packages_split, parse_deb822

LABEL_PREFIX = labels.BASE_PREFIX
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LIB_DIRS = ("lib", "usr/lib", "lib64", "usr/lib64", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
SMOKE = "import ssl, sqlite3, json, ctypes, zlib, lzma, bz2, hashlib, zoneinfo; print('ok')"
SMOKE_UIDS = ("0", "1000", "12345")

_DIGEST_RE = re.compile(r"^(?P<name>[^@\s]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$")
_SNAPSHOT_RE = re.compile(r"^\d{8}T\d{6}Z$")


# --- specs, refs ------------------------------------------------------------------------------


def _spec(base_name: str) -> compat.BaseSpec:
    known = compat.bases()
    if base_name not in known:
        raise UserInputError(f"unknown base {base_name!r}; known bases: {', '.join(sorted(known))}")
    return known[base_name]


def role_names(spec: compat.BaseSpec, role: str | None) -> list[str]:
    """The roles to act on: ``role`` (UserInputError if the base has no such role), or all of them."""
    if role is None:
        return [r for r in ("builder", "dev", "runtime") if r in spec.roles]
    if role not in spec.roles:
        raise UserInputError(f"unknown role {role!r}; roles: {', '.join(spec.roles)}")
    return [role]


@dataclass(frozen=True)
class PinnedRef:
    name: str  # repository, with registry host if any
    tag: str | None
    digest: str

    @property
    def original(self) -> str:
        return f"{self.name}:{self.tag}@{self.digest}" if self.tag else self.by_digest

    @property
    def by_digest(self) -> str:
        return f"{self.name}@{self.digest}"

    @property
    def registry(self) -> str:
        first = self.name.split("/", 1)[0]
        if "/" in self.name and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"


def parse_pinned(ref: str) -> PinnedRef:
    """``name[:tag]@sha256:<64 hex>``; anything else is a UserInputError."""
    m = _DIGEST_RE.match(ref or "")
    if not m:
        raise UserInputError(
            f"registry base ref {ref!r} is not pinned by digest; write it as name:tag@sha256:<64 hex digits>"
        )
    return PinnedRef(m["name"], m["tag"], m["digest"])


def snapshot_epoch(snapshot: str) -> int:
    if not _SNAPSHOT_RE.match(snapshot):
        raise UserInputError(f"snapshot {snapshot!r} is not a snapshot.debian.org timestamp like 20250101T000000Z")
    return int(_dt.datetime.strptime(snapshot, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc).timestamp())


def _security_mirror(mirror: str) -> str | None:
    m = mirror.rstrip("/")
    return m + "-security" if m.endswith("/debian") else None


def apt_sources(spec: compat.BaseSpec) -> list[str]:
    """sources.list lines: the suite, its -updates and -security (stable releases only)."""
    suite = spec.suite
    if not suite:
        raise UserInputError("a bootstrap base needs a suite")
    stable_like = suite not in ("sid", "unstable", "experimental", "rc-buggy")
    if spec.snapshot:
        snapshot_epoch(spec.snapshot)
        opt = "[check-valid-until=no] "
        main = f"http://snapshot.debian.org/archive/debian/{spec.snapshot}"
        sec = f"http://snapshot.debian.org/archive/debian-security/{spec.snapshot}"
    else:
        opt = ""
        main = spec.mirror.rstrip("/")
        sec = _security_mirror(spec.mirror)
    lines = [f"deb {opt}{main} {suite} main"]
    if stable_like:
        lines.append(f"deb {opt}{main} {suite}-updates main")
        if sec:
            lines.append(f"deb {opt}{sec} {suite}-security main")
    return lines


# --- reproducibility: SOURCE_DATE_EPOCH --------------------------------------------------------


def source_date_epoch(spec: compat.BaseSpec) -> int:
    """From the snapshot date, else from the suite's InRelease ``Date`` (the archive state)."""
    if spec.snapshot:
        return snapshot_epoch(spec.snapshot)
    import requests

    url = f"{spec.mirror.rstrip('/')}/dists/{spec.suite}/InRelease"
    try:
        resp = requests.get(url, timeout=30)
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise ImagegenError(f"cannot read {url}: {str(exc).splitlines()[0][:160]} (is the mirror reachable?)") from None
    return release_date_epoch(resp.text, url)


def release_date_epoch(text: str, where: str = "InRelease") -> int:
    for line in text.splitlines():
        if line.startswith("Date:"):
            from email.utils import parsedate_to_datetime

            return int(parsedate_to_datetime(line.split(":", 1)[1].strip()).timestamp())
    raise ImagegenError(f"{where} has no Date field")


# --- running mmdebstrap -----------------------------------------------------------------------


def mmdebstrap_argv(spec: compat.BaseSpec, role: str, target: Path, hook_cfg: Path, mode: str) -> list[str]:
    r = spec.role(role)
    wanted, cut = packages_split(r.packages)
    if cut and r.variant != "extract":
        raise UserInputError(f"cut packages ({', '.join(sorted(cut))}-) only apply to the extract variant")
    hook = (f"{shlex.quote(sys.executable)} -m imagegen.bases --hook "
            f"{'runtime' if r.variant == 'extract' else 'minbase'} {shlex.quote(str(hook_cfg))} \"$1\"")
    argv = ["mmdebstrap", f"--mode={mode}", f"--variant={r.variant or 'minbase'}", "--format=tar",
            "--aptopt=Acquire::Retries \"3\";",
            "--aptopt=APT::Install-Recommends \"false\";",
            "--aptopt=APT::Install-Suggests \"false\";"]
    if spec.snapshot:
        argv.append("--aptopt=Acquire::Check-Valid-Until \"false\";")
    if wanted:
        argv.append("--include=" + ",".join(wanted))
    if r.variant == "extract":
        argv.append("--setup-hook=for d in bin sbin lib lib64; do mkdir -p \"$1/usr/$d\"; ln -s usr/$d \"$1/$d\"; done")
        argv.append(f"--extract-hook={hook}")
        # the hook removes apt's and dpkg's state itself (the runtime has neither)
        argv.append("--skip=cleanup/apt,cleanup/mmdebstrap")
    else:
        for g in DOC_EXCLUDES:
            argv.append(f"--dpkgopt=path-exclude={g}")
        for g in DOC_INCLUDES:
            argv.append(f"--dpkgopt=path-include={g}")
        argv.append("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        argv.append(f"--customize-hook={hook}")
    argv += [spec.suite or "", str(target), *apt_sources(spec)]
    return argv


def explain_failure(lines: Iterable[str], spec: compat.BaseSpec) -> str:
    """One line naming the package and mirror for a failed download, else apt's first error."""
    lines = [ln.strip() for ln in lines]
    mirror = spec.mirror if not spec.snapshot else f"snapshot.debian.org ({spec.snapshot})"
    for ln in lines:
        m = re.search(r"Failed to fetch (\S+)\s*(.*)", ln)
        if m:
            url, why = m.groups()
            pkg = url.rsplit("/", 1)[-1].split("_", 1)[0]
            if url.endswith(".deb"):
                return f"download of package {pkg} failed from {mirror}: {why or url}".strip()
            return f"cannot fetch {url} from {mirror}: {why}".strip()
        m = re.search(r"Unable to locate package (\S+)", ln)
        if m:
            return f"package {m.group(1)} not found in {spec.suite} at {mirror}"
        m = re.search(r"Package '?(\S+?)'? has no installation candidate", ln)
        if m:
            return f"package {m.group(1)} has no installation candidate in {spec.suite} at {mirror}"
    errs = [ln for ln in lines if ln.startswith("E:")]
    if errs:
        return f"{errs[0][2:].strip()[:300]} (mirror {mirror})"
    tail = [ln for ln in lines if ln][-1:] or ["no output"]
    return f"{tail[0][:300]} (mirror {mirror})"


def safe_rmtree(path: Path) -> None:
    """Remove a temp dir, first unmounting anything a killed mmdebstrap left mounted in it; never
    descend into a mount point (a bind-mounted /dev must not be emptied)."""
    if not path.exists():
        return
    for mp in sorted(flock.mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    flock.remove_tree(path)  # refuses what is still mounted; read-only dirs of a rootfs made writable


def run_mmdebstrap(argv: list[str], *, env: dict, spec: compat.BaseSpec, label: str) -> None:
    """Run mmdebstrap in its own process group, progress to stderr. On Ctrl-C: SIGTERM the group
    and wait for mmdebstrap's own cleanup (it unmounts), then re-raise."""
    if not shutil.which("mmdebstrap"):
        raise ImagegenError("mmdebstrap not found", hint="apt-get install mmdebstrap, or run scripts/setup.sh")
    tail: deque[str] = deque(maxlen=200)
    # mmdebstrap inherits the flock that owns its TMPDIR: if this process is SIGKILLed, the work dir
    # stays owned (not reaped by the next bootstrap) until the orphaned mmdebstrap exits too
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, errors="replace",
                            pass_fds=flock.holder_fds(Path(env.get("TMPDIR", ""))))
    try:
        assert proc.stderr
        for line in proc.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith(("I: downloading", "I: extracting", "I: installing", "I: creating tarball",
                                "I: running apt-get update", "E:", "W:")):
                log(f"  [{label}] {line}")
        rc = proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    if rc != 0:
        for line in [ln for ln in tail if not ln.startswith("I: ")][-20:]:
            log(f"  [{label}] {line}")
        raise ImagegenError(f"bootstrap of {label} failed: {explain_failure(tail, spec)}")


def _stop_group(proc: subprocess.Popen, grace: float = 60.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- bootstrapping ---------------------------------------------------------------------------


@dataclass
class Tarball:
    path: Path
    sha256: str
    epoch: int
    versions: dict[str, str]  # package -> version, from the rootfs's dpkg status
    seconds: float


def bootstrap_tarball(spec: compat.BaseSpec, role: str, workdir: Path, *, label: str = "") -> Tarball:
    """Build the role's rootfs tarball into workdir (which the caller removes)."""
    label = label or role
    epoch = source_date_epoch(spec)
    mode = "root" if os.geteuid() == 0 else "unshare"
    # apt downloads as _apt (root mode) and the unshared user (unshare mode) must reach the tempdir
    workdir.chmod(0o1777 if mode == "unshare" else 0o755)
    target = workdir / "rootfs.tar"
    cfg = workdir / "hook.json"
    cfg.write_text(json.dumps({"packages": list(spec.role(role).packages), "python": spec.python,
                               "epoch": epoch, "summary": str(workdir / "summary.json")}))
    argv = mmdebstrap_argv(spec, role, target, cfg, mode)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), TMPDIR=str(workdir), LC_ALL="C.UTF-8")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      os.environ.get("PYTHONPATH")]))
    t0 = time.monotonic()
    run_mmdebstrap(argv, env=env, spec=spec, label=label)
    seconds = time.monotonic() - t0
    digest = hashlib.sha256()
    versions: dict[str, str] = {}
    with open(target, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    with tarfile.open(target) as tf:
        for name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
            with contextlib.suppress(KeyError):
                data = tf.extractfile(name)
                if data:
                    for para in parse_deb822(data.read().decode()):
                        versions[para.get("Package", "")] = para.get("Version", "")
                    break
    return Tarball(target, digest.hexdigest(), epoch, versions, seconds)


def _labels(name: str, spec: compat.BaseSpec, role: str, tb: Tarball, ref: str) -> dict[str, str]:
    r = spec.role(role)
    created = _dt.datetime.fromtimestamp(tb.epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    inputs = spec.inputs(role)
    py = tb.versions.get(f"python{spec.python}-minimal") or tb.versions.get(f"python{spec.python}", "")
    return {
        labels.OCI_TITLE: f"imagegen base {name} {role}",
        labels.OCI_DESCRIPTION: spec.description or f"{name} {role} base",
        labels.OCI_CREATED: created,
        labels.OCI_VERSION: f"{spec.suite}-{tb.epoch}",
        labels.OCI_REF_NAME: ref,
        labels.OCI_VENDOR: "imagegen",
        labels.OCI_LICENSES: "see /usr/share/doc/*/copyright",
        LABEL_PREFIX: "1",
        f"{LABEL_PREFIX}.name": name,
        f"{LABEL_PREFIX}.role": role,
        f"{LABEL_PREFIX}.suite": spec.suite or "",
        f"{LABEL_PREFIX}.mirror": spec.mirror,
        f"{LABEL_PREFIX}.snapshot": spec.snapshot or "",
        f"{LABEL_PREFIX}.variant": r.variant or "",
        f"{LABEL_PREFIX}.packages": ",".join(sorted(r.packages)),
        f"{LABEL_PREFIX}.recipe": str(compat.BOOTSTRAP_RECIPE_VERSION),
        f"{LABEL_PREFIX}.inputs-sha256": hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(),
        f"{LABEL_PREFIX}.source-date-epoch": str(tb.epoch),
        f"{LABEL_PREFIX}.rootfs-sha256": tb.sha256,
        f"{LABEL_PREFIX}.python": py,
        f"{LABEL_PREFIX}.libc6": tb.versions.get("libc6", ""),
        f"{LABEL_PREFIX}.dpkg-status": "/var/lib/dpkg/status",
    }


def base_config(labels: dict[str, str], role: str, tb: Tarball, what: str) -> dict:
    """The base image's config: what `docker import --change` set before (PATH, LANG, CMD, labels), plus
    `created` and one history entry at the tarball's SOURCE_DATE_EPOCH, and the rootfs tarball as the
    one layer. Nothing comes from the clock, so one tarball always gives one image ID (a `docker import`
    stamps the import time into `created`: two imports, two IDs)."""
    created = _dt.datetime.fromtimestamp(tb.epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": [f"PATH={IMAGE_PATH}", "LANG=C.UTF-8"],
            "Cmd": ["python3"] if role == "runtime" else ["/bin/bash"],
            "Labels": dict(sorted(labels.items())),
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{tb.sha256}"]},
        "history": [{"created": created, "created_by": f"imagegen bases: mmdebstrap {what}",
                     "comment": "rootfs tarball, SOURCE_DATE_EPOCH " + str(tb.epoch)}],
    }


def _load(tb: Tarball, config: dict, what: str) -> str:
    """Load the rootfs tarball as a one-layer image with `config` (dockerarchive), untagged; returns the
    image ID. Raises EngineError (one line)."""
    from .. import dockerarchive

    layer = dockerarchive.Layer.from_file(tb.path, f"sha256:{tb.sha256}")
    return dockerarchive.load(dockerarchive.stream(config, [layer]), what=f"base {what}")


def smoke_check(image: str, *, uids: Iterable[str] = SMOKE_UIDS, timeout: int = 60) -> None:
    """Run the base's python3 as each uid; raise ImagegenError with its output on failure."""
    from ..engine import client

    c = client()
    for uid in uids:
        cont = c.containers.create(image, ["python3", "-c", SMOKE], user=uid, network_disabled=True,
                                   labels={"imagegen.tmp": "1"})
        try:
            cont.start()
            res = cont.wait(timeout=timeout)
            logs = cont.logs().decode(errors="replace").strip()
            if res.get("StatusCode") != 0 or logs.splitlines()[-1:] != ["ok"]:
                raise ImagegenError(f"base check failed for {image} as uid {uid}: {logs.splitlines()[-1:] or res}")
        finally:
            with contextlib.suppress(Exception):
                cont.remove(force=True)


def _one_bootstrap_at_a_time(ref: str):
    """An flock per base ref: a second process waits, then finds the image built."""
    return flock.held(paths.base_flocks() / (re.sub(r"[^\w.-]", "_", ref) + ".lock"), mode="w")


def local_image(ref: str):
    """The docker-py Image ``ref`` names in the local engine, or None."""
    from docker.errors import ImageNotFound

    from ..engine import client

    try:
        return client().images.get(ref)
    except ImageNotFound:
        return None


def build_role(name: str, spec: compat.BaseSpec, role: str) -> tuple[str, Tarball]:
    """Bootstrap, import, check, tag. Atomic: on any failure, Ctrl-C or SIGTERM, nothing is left."""
    with sigterm_as_interrupt():
        return _build_role(name, spec, role)


def _build_role(name: str, spec: compat.BaseSpec, role: str) -> tuple[str, Tarball]:
    from ..engine import client

    ref = spec.role_ref(name, role)
    repo, tag = ref.rsplit(":", 1)
    workdir = flock.make_owned_dir(paths.tmp_parent(), paths.BASE_PREFIX, remove=safe_rmtree)  # reaps killed ones
    image_id = None
    tagged = False
    try:
        log(f"bootstrapping {name}/{role} ({spec.suite}, variant {spec.role(role).variant}) -> {ref}")
        tb = bootstrap_tarball(spec, role, workdir, label=f"{name}/{role}")
        log(f"  rootfs {tb.path.stat().st_size / 1e6:.1f} MB sha256 {tb.sha256[:16]}... in {tb.seconds:.0f}s; loading")
        image_id = _load(tb, base_config(_labels(name, spec, role, tb, ref), role, tb, f"{name}/{role}"), ref)
        smoke_check(image_id)
        old = local_image(ref)
        client().api.tag(image_id, repo, tag, force=True)
        tagged = True
        if old is not None and old.id != image_id and not old.tags[1:]:
            with contextlib.suppress(Exception):
                client().images.remove(old.id, noprune=False)
        return ref, tb
    finally:
        if image_id and not tagged:
            with contextlib.suppress(Exception):
                client().images.remove(image_id, force=True)
        flock.remove_owned_dir(workdir, remove=safe_rmtree)


def ensure_role(base_name: str, role: str, *, force: bool = False, spec: compat.BaseSpec | None = None) -> str:
    """An image ref for the role that exists in the local engine (building or pulling it).

    ``spec``: the base's definition when it does not come from imagegen/data/bases.yaml (a
    matrix may define its own bases); by default it is looked up by name there."""
    spec = spec or _spec(base_name)
    role_names(spec, role)
    return ensure_spec_role(base_name, spec, role, force=force)


def ensure_spec_role(name: str, spec: compat.BaseSpec, role: str, *, force: bool = False) -> str:
    if spec.source == "registry":
        return ensure_registry(spec.role(role).ref or "", force=force)
    ref = spec.role_ref(name, role)
    with _one_bootstrap_at_a_time(ref):
        if not force and local_image(ref) is not None:
            return ref
        build_role(name, spec, role)
    return ref


# --- registry bases --------------------------------------------------------------------------


def local_by_digest(pinned: PinnedRef):
    """The local image whose RepoDigests hold name@digest, or None."""
    img = local_image(pinned.by_digest)
    if img is not None:
        return img
    from ..engine import client

    for img in client().images.list(name=pinned.name):
        if pinned.by_digest in (img.attrs.get("RepoDigests") or []):
            return img
    return None


def ensure_registry(ref: str, *, force: bool = False) -> str:
    """Use the digest-pinned image if it is local; else pull it by digest."""
    from ..engine import api

    pinned = parse_pinned(ref)
    if not force and local_by_digest(pinned) is not None:
        return pinned.by_digest
    log(f"pulling {pinned.by_digest}")
    error = None
    try:
        for msg in api().pull(pinned.name, tag=pinned.digest, stream=True, decode=True):
            if "error" in msg:
                error = msg.get("error") or str(msg.get("errorDetail"))
                break
    except Exception as exc:  # docker.errors.APIError / NotFound / requests errors
        error = getattr(exc, "explanation", None) or str(exc)
    if error is None and local_by_digest(pinned) is None:
        error = "pull finished but the image is not in the engine"
    if error is not None:
        raise pull_error(pinned, str(error))
    return pinned.by_digest


def pull_error(pinned: PinnedRef, error: str) -> EngineError:
    first = " ".join(error.split())[:200]
    offline = ("to work offline: `docker save` it on a connected machine, `docker load -i FILE` here, push it to a "
               "registry this engine reaches (e.g. docker-registry on 127.0.0.1) and pin that digest, "
               "or use a bootstrapped base: `imagegen base build bookworm`; see docs/bases.md")
    if "manifest unknown" in first or ("not found" in first.lower() and "no such host" not in first):
        return EngineError(f"cannot pull {pinned.original}: digest not found in {pinned.registry} ({first})",
                           hint=offline)
    return EngineError(f"cannot pull {pinned.original}: registry {pinned.registry} is unreachable ({first})",
                       hint=offline)


# --- shared-library inventory ----------------------------------------------------------------


def _lib_member(path: str) -> bool:
    path = path[2:] if path.startswith("./") else path
    d, _, base = path.rpartition("/")
    return d in LIB_DIRS and ".so" in base and (base.endswith(".so") or ".so." in base)


def elf_soname(data: bytes) -> str | None:
    """DT_SONAME of an ELF file's bytes (:func:`imagegen.elf.read`), or None."""
    from .. import elf

    facts = elf.read(data) if data.startswith(elf.MAGIC) else None
    return facts.soname if facts is not None else None


SONAME_READ_LIMIT = 64 << 20


def sonames_from_tar(stream) -> set[str]:
    """Library basenames (files and links) in the library dirs of a filesystem tar stream, plus
    the DT_SONAME of each regular library file up to 64 MB."""
    names: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for m in tf:
            if not _lib_member(m.name):
                continue
            names.add(m.name.rsplit("/", 1)[-1])
            if m.isfile() and m.size <= SONAME_READ_LIMIT:
                fh = tf.extractfile(m)
                if fh:
                    soname = elf_soname(fh.read())
                    if soname:
                        names.add(soname)
    return names


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterable[bytes]):
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def role_sonames(image_ref: str) -> set[str]:
    """Shared-library names present in an image's library dirs, read from the streamed filesystem
    of a created (never started) container; cached by image ID under $IMAGEGEN_CACHE/sonames."""
    from ..engine import client

    img = local_image(image_ref)
    if img is None:
        raise UserInputError(f"image {image_ref} is not in the local engine")
    cache = paths.sonames_dir() / (img.id.split(":", 1)[-1] + ".json")
    with contextlib.suppress(OSError, ValueError):
        return set(json.loads(cache.read_text()))
    c = client()
    cont = c.api.create_container(img.id, command=["/nonexistent"], labels={"imagegen.tmp": "1"},
                                  network_disabled=True)
    try:
        stream = io.BufferedReader(_ChunkReader(c.api.export(cont["Id"], chunk_size=1 << 20)), 1 << 20)
        names = sonames_from_tar(stream)
    finally:
        with contextlib.suppress(Exception):
            c.api.remove_container(cont["Id"], force=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sorted(names)))
    tmp.replace(cache)
    return names


# --- listing ------------------------------------------------------------------------------------


def all_bases(matrix: Path | None = None) -> dict[str, compat.BaseSpec]:
    """imagegen's bases, plus (overridden by) a matrix's own `bases:`."""
    path = matrix if matrix is not None else Path("matrix.yaml")
    if matrix is None and not path.exists():
        return dict(compat.bases())
    from .. import matrix as matrix_mod

    return matrix_mod.bases_for(matrix_mod.load(path))


def list_rows(known: dict[str, compat.BaseSpec] | None = None) -> list[dict]:
    rows = []
    for name, spec in (known if known is not None else compat.bases()).items():
        for role in spec.roles:
            if spec.source == "registry":
                ref = spec.role(role).ref or ""
                try:
                    img = local_by_digest(parse_pinned(ref))
                except UserInputError:
                    img = None
            else:
                ref = spec.role_ref(name, role)
                img = local_image(ref)
            rows.append({"base": name, "role": role, "source": spec.source, "ref": ref,
                         "present": img is not None, "size": img.attrs.get("Size") if img else None,
                         "id": img.id if img else None})
    return rows
