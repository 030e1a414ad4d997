"""Build cells through the Docker SDK (low-level API, streamed, classic builder).

Flow per cell: render -> lock (committed locks/<cell>.txt, or resolve) -> bases -> wheelhouse ->
ELF closure -> build context -> inputs digest -> skip if the tag already holds it -> build
untagged -> smoke-test the image ID -> only then move the tag. A failed or interrupted build
leaves the tag where it was and removes what it created.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import docker.errors
import requests.exceptions

from . import compat, engine, render
from .console import err, log
from .errors import EngineError, GateFailed, ImagegenError, UserInputError
from .matrix import Cell, Matrix

LABEL_DIGEST = "io.imagegen.inputs-digest"
LABEL_CELL = "io.imagegen.cell"
SOURCE_URL = os.environ.get("IMAGEGEN_SOURCE_URL", "https://github.com/imagegen/imagegen")


def cache_dir() -> Path:
    d = Path(os.environ.get("IMAGEGEN_CACHE", Path.home() / ".cache" / "imagegen"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class BuildResult:
    cell: Cell
    status: str  # built | skipped | failed
    image_id: str | None = None
    seconds: float = 0.0
    size: int | None = None
    log_path: Path | None = None
    message: str = ""
    prune_report: dict | None = None
    closure: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    cell: Cell
    context: Path
    digest: str
    refs: dict[str, str]
    closure: list[str]
    lock_path: Path


# --- preparation ------------------------------------------------------------------------------


def lock_path(m: Matrix, cell: Cell) -> Path:
    return m.path.resolve().parent / "locks" / f"{cell.id}.txt"


def build_tools() -> list[str]:
    """Builder-stage tools (data: imagegen/data/build.yaml), locked with every cell."""
    import yaml

    return list(yaml.safe_load((compat.DATA / "build.yaml").read_text()).get("tools", []))


def lock_request(cell: Cell):
    from . import lock as lock_mod

    base = cell.base_spec
    return lock_mod.LockRequest(
        requirements=list(cell.requirements),
        python=cell.python,
        glibc=base.glibc or "2.17",
        arch="x86_64",
        indexes=[(i.name, i.kind, i.url) for i in cell.indexes],
        extra_tools=build_tools(),
        cell_id=cell.id,
        regenerate=f"imagegen lock --variant {cell.ref}",
    )


def ensure_lock(m: Matrix, cell: Cell, *, refresh: bool = False):
    """The cell's lock: the committed file if it matches the cell's requirements, else a new resolution."""
    from . import lock as lock_mod

    path = lock_path(m, cell)
    req = lock_request(cell)
    if path.exists() and not refresh:
        lk = lock_mod.read_lock(path)
        if lock_mod.lock_matches(lk, req):
            return lk, path
        log(f"{cell.ref}: {path.name} is stale (the cell's requirements changed); locking again")
    log(f"{cell.ref}: resolving {', '.join(cell.requirements)} for Python {cell.python}")
    lk = lock_mod.resolve(req, cell_id=cell.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_mod.write_lock(lk, path)
    return lk, path


def _digest_inputs(parts: dict[str, bytes | str]) -> str:
    h = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        data = value.encode() if isinstance(value, str) else value
        h.update(key.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    return "sha256:" + h.hexdigest()


def prepare(m: Matrix, cell: Cell, workdir: Path) -> Prepared:
    from . import bases, closure, wheelhouse

    rendered = render.render_cell(m, cell)
    lk, lpath = ensure_lock(m, cell)
    base = cell.base_spec
    refs = {role: bases.ensure_role(cell.base, role, spec=base) for role in ("builder", cell.runtime_role)}
    wheels = wheelhouse.fetch(lk)
    api = engine.api()
    base_ids = {role: api.inspect_image(ref)["Id"] for role, ref in refs.items()}
    runtime_id = base_ids[cell.runtime_role]
    closure_key = _digest_inputs({"lock": lpath.read_bytes(), "base": runtime_id, "suite": base.suite or "",
                                  "mirror": base.mirror, "host": ",".join(sorted(compat.cuda().host_provided))})
    closure_cache = cache_dir() / "closures" / f"{closure_key.split(':')[1]}.json"
    if closure_cache.exists():
        clos_packages = json.loads(closure_cache.read_text())["packages"]
    else:
        base_sonames = bases.role_sonames(refs[cell.runtime_role])
        clos = closure.compute_closure(
            wheels, base_sonames, suite=base.suite or "bookworm", arch="amd64", mirror=base.mirror,
            host_provided=set(compat.cuda().host_provided),
        )
        clos_packages = list(clos.packages)
        closure_cache.parent.mkdir(parents=True, exist_ok=True)
        closure_cache.write_text(json.dumps({"packages": clos_packages, "closure": clos.to_json()}))
    ctx = workdir / cell.id
    if ctx.exists():
        shutil.rmtree(ctx)
    ctx.mkdir(parents=True)
    parts: dict[str, bytes | str] = {}
    for rel, content in rendered.files.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(content)
        parts[rel] = content
    for rel, src in render.build_context_files().items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, ctx / rel)
        parts[rel] = src.read_bytes()
    extra = cell.fw.versions[cell.version].runtime_packages
    packages = sorted(set(clos_packages) | set(extra))
    closure_txt = "".join(f"{p}\n" for p in packages)
    (ctx / "imagegen" / "closure.txt").write_text(closure_txt)
    parts["imagegen/closure.txt"] = closure_txt
    wheelhouse.stage(lk, ctx)
    parts["wheels/requirements.lock"] = (ctx / "wheels" / "requirements.lock").read_bytes()
    if (ctx / "wheels" / "tools.lock").exists():
        parts["wheels/tools.lock"] = (ctx / "wheels" / "tools.lock").read_bytes()
    for role, image_id in base_ids.items():
        parts[f"base:{role}"] = image_id
    return Prepared(cell=cell, context=ctx, digest=_digest_inputs(parts), refs=refs, closure=packages,
                    lock_path=lpath)


def current_digest(ref: str) -> str | None:
    try:
        info = engine.api().inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    return ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_DIGEST)


def fast_skip_digest(m: Matrix, cell: Cell) -> str | None:
    """The inputs digest recorded in a cheap sidecar next to the lock, if every input is unchanged.

    Lets a no-op rebuild answer in well under a second without re-staging GBs of wheels."""
    stamp = cache_dir() / "stamps" / f"{cell.id}.json"
    if not stamp.exists():
        return None
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if data.get("quick") != _quick_key(m, cell):
        return None
    return data.get("digest")


def _quick_key(m: Matrix, cell: Cell) -> str:
    """A cheap fingerprint of the same inputs: rendered files, scripts, lock file, base image IDs."""
    rendered = render.render_cell(m, cell)
    parts: dict[str, bytes | str] = dict(rendered.files)
    for rel, src in render.build_context_files().items():
        parts[rel] = src.read_bytes()
    lp = lock_path(m, cell)
    parts["lock"] = lp.read_bytes() if lp.exists() else b""
    base = cell.base_spec
    api = engine.api()
    for role in ("builder", cell.runtime_role):
        try:
            parts[f"base:{role}"] = api.inspect_image(base.role_ref(cell.base, role))["Id"]
        except docker.errors.ImageNotFound:
            parts[f"base:{role}"] = "missing"
    return _digest_inputs(parts)


def _write_stamp(m: Matrix, cell: Cell, digest: str) -> None:
    stamp = cache_dir() / "stamps" / f"{cell.id}.json"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"quick": _quick_key(m, cell), "digest": digest}))


# --- the build itself -------------------------------------------------------------------------

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
_RUNNING = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$")

# What builds in flight have created, so an interrupt can remove it (see abort_cleanup).
_ACTIVE_LOCK = threading.Lock()
_ACTIVE: dict[str, set[str]] = {"containers": set(), "workdirs": set(), "images": set()}


def _track(kind: str, value: str, add: bool = True) -> None:
    with _ACTIVE_LOCK:
        (_ACTIVE[kind].add if add else _ACTIVE[kind].discard)(value)


def abort_cleanup() -> None:
    """Called on Ctrl-C/SIGTERM: remove step containers still running, untagged new images and contexts."""
    with _ACTIVE_LOCK:
        containers, workdirs, images = (set(_ACTIVE[k]) for k in ("containers", "workdirs", "images"))
    try:
        api = engine.api()
        for cid in containers:
            try:
                api.remove_container(cid, force=True)
            except docker.errors.APIError:
                pass
        for image in images:
            try:
                api.remove_image(image)
            except docker.errors.APIError:
                pass
    except ImagegenError:
        pass
    try:
        from . import lock as lock_mod

        lock_mod.terminate_children()
    except Exception:  # noqa: BLE001 - best effort while exiting
        pass
    for d in workdirs:
        shutil.rmtree(d, ignore_errors=True)


class _Progress:
    """Thread-safe progress callbacks: cell, step x of y, instruction, elapsed."""

    def __init__(self, progress=None):
        self.progress = progress
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()

    def start(self, cell: Cell) -> None:
        if self.progress is None:
            return
        with self.lock:
            self.tasks[cell.id] = self.progress.add_task(cell.ref, total=None, step="preparing")

    def update(self, cell: Cell, text: str, completed: int | None = None, total: int | None = None) -> None:
        if self.progress is None:
            log(f"{cell.ref}: {text}")
            return
        with self.lock:
            task = self.tasks.get(cell.id)
            if task is not None:
                self.progress.update(task, step=text[:90], completed=completed, total=total)

    def finish(self, cell: Cell, text: str) -> None:
        if self.progress is None:
            log(f"{cell.ref}: {text}")
            return
        with self.lock:
            task = self.tasks.get(cell.id)
            if task is not None:
                self.progress.update(task, step=text, completed=1, total=1)


def docker_build(prep: Prepared, log_path: Path, progress: _Progress, *, no_cache: bool = False) -> tuple[str, list[str]]:
    """Run the classic-builder build; return (image ID, step image IDs). Raise with the log's tail."""
    cell = prep.cell
    api = engine.api()
    labels = {
        LABEL_DIGEST: prep.digest,
        LABEL_CELL: cell.ref,
        "org.opencontainers.image.created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.revision": _git_revision(),
        "org.opencontainers.image.source": SOURCE_URL,
        "io.imagegen.closure": ",".join(prep.closure),
    }
    # One LABEL instruction appended to the context's Dockerfile (the API's `labels` would add one
    # build step per label); the inputs digest was computed before, over the rendered file.
    dockerfile = prep.context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "LABEL " + " \\\n      ".join(
        f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "\n")
    tail: deque[str] = deque(maxlen=25)
    step_images: list[str] = []
    image_id = None
    error = None
    step_started: tuple[str, float] | None = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8", errors="replace") as logf:
        logf.write(f"# imagegen build {cell.ref} inputs {prep.digest}\n")
        try:
            stream = api.build(path=str(prep.context), rm=True, forcerm=True, decode=True, pull=False,
                               nocache=no_cache)
            for chunk in stream:
                if "stream" in chunk:
                    text = chunk["stream"]
                    for line in text.splitlines():
                        s = _STEP.match(line)
                        if s:
                            now = time.monotonic()
                            if step_started is not None:
                                logf.write(f"# imagegen: step {step_started[0]} took {now - step_started[1]:.1f}s\n")
                            step_started = (s.group(1), now)
                        logf.write(line + "\n")
                        tail.append(line)
                        if s:
                            progress.update(cell, f"step {s.group(1)}/{s.group(2)} {s.group(3)}",
                                            int(s.group(1)) - 1, int(s.group(2)))
                        r = _RUNNING.match(line)
                        if r:
                            _track("containers", r.group(1))
                        elif line.startswith("Removing intermediate container "):
                            _track("containers", line.split()[-1], add=False)
                        i = _IMAGE.match(line)
                        if i:
                            step_images.append(i.group(1))
                        if line.startswith("Successfully built "):
                            image_id = line.split()[-1]
                elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                elif "error" in chunk:
                    error = chunk.get("error", "").strip()
                    logf.write(f"ERROR: {error}\n")
                    tail.append(error)
        except (requests.exceptions.ConnectionError, docker.errors.APIError) as exc:
            error = str(exc).splitlines()[0]
            logf.write(f"ERROR: {error}\n")
    if error or not image_id:
        reason = error or "the build produced no image"
        if "no space left on device" in reason:
            raise ImagegenError(f"{cell.ref}: disk full while building (free space with `docker system prune`); "
                                f"log: {log_path}")
        err.print(f"--- last lines of {log_path} ---", markup=False)
        for line in tail:
            err.print(line, markup=False)
        raise ImagegenError(f"{cell.ref}: build failed: {reason[:300]}; full log: {log_path}")
    return image_id, step_images


def _git_revision() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=Path(__file__).resolve().parent)
        rev = r.stdout.strip()
        if r.returncode == 0 and rev:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
            return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def remove_images(ids: list[str], keep: set[str]) -> None:
    """Best-effort removal of a build's untagged intermediate images (builder stages hold GBs of
    wheels). Tagged images (the bases, other cells) and ancestors of the kept image are left alone."""
    api = engine.api()
    for image in reversed(ids):
        if any(k and (k.replace("sha256:", "").startswith(image) or image.startswith(k.replace("sha256:", "")[:12]))
               for k in keep):
            continue
        try:
            info = api.inspect_image(image)
            if info.get("RepoTags"):
                continue
            api.remove_image(info["Id"], noprune=False)
        except docker.errors.APIError:
            pass  # a parent of the kept image, or shared with another build's cache


def prune_report_from_log(log_path: Path) -> dict | None:
    try:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("IMAGEGEN-PRUNE-REPORT "):
                return json.loads(line.split(" ", 1)[1])
    except (OSError, ValueError):
        return None
    return None


def build_one(m: Matrix, cell: Cell, *, force: bool, run_tests: bool, progress: _Progress,
              keep_cache: bool = False, junit_dir: Path | None = None, no_cache: bool = False) -> BuildResult:
    t0 = time.monotonic()
    progress.start(cell)
    if not force:
        digest = fast_skip_digest(m, cell)
        if digest and current_digest(cell.local_ref) == digest:
            progress.finish(cell, "up to date (skipped)")
            info = engine.api().inspect_image(cell.local_ref)
            return BuildResult(cell, "skipped", image_id=info["Id"], size=info["Size"],
                               seconds=time.monotonic() - t0, message="inputs unchanged")
    workdir = Path(tempfile.mkdtemp(prefix="imagegen-ctx-", dir=cache_dir()))
    _track("workdirs", str(workdir))
    log_path = cache_dir() / "logs" / f"{cell.id}.log"
    image_id = None
    step_images: list[str] = []
    try:
        progress.update(cell, "preparing: lock, bases, wheelhouse, closure")
        prep = prepare(m, cell, workdir)
        if not force and current_digest(cell.local_ref) == prep.digest:
            _write_stamp(m, cell, prep.digest)
            progress.finish(cell, "up to date (skipped)")
            return BuildResult(cell, "skipped", seconds=time.monotonic() - t0, message="inputs unchanged")
        image_id, step_images = docker_build(prep, log_path, progress, no_cache=no_cache)
        _track("images", image_id)
        report = prune_report_from_log(log_path)
        if run_tests:
            progress.update(cell, "testing")
            from . import testrun

            summary = testrun.test_image(cell, image_id, junit_dir=junit_dir)
            if not summary.ok:
                raise GateFailed(f"{cell.ref}: built image {image_id[:19]} failed its tests "
                                 f"({'; '.join(summary.reasons())[:400] or 'no checks ran'}); the tag was not "
                                 f"moved; JUnit XML: {summary.junit_path}")
        engine.api().tag(image_id, cell.local_ref.rsplit(":", 1)[0], cell.local_ref.rsplit(":", 1)[1], force=True)
        _track("images", image_id, add=False)
        _write_stamp(m, cell, prep.digest)
        size = engine.api().inspect_image(image_id)["Size"]
        progress.finish(cell, "built")
        return BuildResult(cell, "built", image_id=image_id, seconds=time.monotonic() - t0, size=size,
                           log_path=log_path, prune_report=report, closure=prep.closure)
    except BaseException:
        # Interrupted or failed: the new image never got the tag; remove it if nothing else uses it.
        if image_id:
            try:
                engine.api().remove_image(image_id)
            except docker.errors.APIError:
                pass
        raise
    finally:
        if not keep_cache and step_images:
            remove_images(step_images, keep={image_id or ""})
        shutil.rmtree(workdir, ignore_errors=True)
        _track("workdirs", str(workdir), add=False)


def build_cells(m: Matrix, cells: list[Cell], *, jobs: int = 1, force: bool = False, run_tests: bool = True,
                keep_cache: bool = False, junit_dir: Path | None = None, no_cache: bool = False) -> list[BuildResult]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    engine.client()  # fail fast, with the remedy, when the daemon is down
    results: list[BuildResult] = []
    columns = [SpinnerColumn(), TextColumn("{task.description}"), TextColumn("[dim]{task.fields[step]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as prog:
        progress = _Progress(prog if err.is_terminal else None)
        if jobs <= 1 or len(cells) == 1:
            for cell in cells:
                results.append(_guarded(m, cell, force, run_tests, progress, keep_cache, junit_dir, no_cache))
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_guarded, m, c, force, run_tests, progress, keep_cache, junit_dir, no_cache): c
                           for c in cells}
                for fut in as_completed(futures):
                    results.append(fut.result())
    order = {c.id: i for i, c in enumerate(cells)}
    return sorted(results, key=lambda r: order[r.cell.id])


def _guarded(m, cell, force, run_tests, progress, keep_cache, junit_dir, no_cache=False) -> BuildResult:
    t0 = time.monotonic()
    try:
        return build_one(m, cell, force=force, run_tests=run_tests, progress=progress, keep_cache=keep_cache,
                         junit_dir=junit_dir, no_cache=no_cache)
    except (ImagegenError, UserInputError, EngineError) as exc:
        progress.finish(cell, "failed")
        return BuildResult(cell, "failed", seconds=time.monotonic() - t0, message=str(exc),
                           log_path=cache_dir() / "logs" / f"{cell.id}.log")
