"""The pipeline: prepare -> build -> test -> tag, for each selected cell. It sits above the stages
(render, lock, bases, wheelhouse, closure, build, testrun) and below the CLI; no stage imports it.

Per cell: render once -> lock (the committed ``locks/<cell>.txt``, or resolve) -> bases -> wheelhouse
-> ELF closure -> build context -> inputs digest -> skip if the tag already holds it -> build
untagged -> test the image ID -> only then move the tag. A failed or interrupted build leaves the
tag where it was and removes what it created.

The inputs digest has one recipe (``build_inputs`` + ``inputs_digest``): the rendered files, the
static context scripts and the base images' IDs, plus what preparation adds (the closure and the
staged lock files). A cheaper "quick key" over the same list, with the lock file instead of the
staged files, is stamped after each build so a no-op rebuild answers without staging anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import docker.errors

from . import (
    bases,
    buildkit,
    closure,
    closurefile,
    coldstart,
    compat,
    engine,
    flock,
    hostpip,
    lockfile,
    paths,
    recipe,
    render,
    reproduce,
    wheelhouse,
)
from . import lock as lock_stage
from .build import (
    ACTIVE,
    CONNECTION_LOST,
    Progress,
    Tracker,
    build_image,
    current_digest,
    current_image_id,
    git_revision,
    prune_report_from_log,
    remove_created,
    remove_images,
)
from .buildkit import CLASSIC, BuildPath
from .console import err, log, warn
from .errors import GateFailed, ImagegenError, UserInputError
from .imagetest.runner import Summary
from .labels import SOURCE_URL
from .matrix import Cell, Matrix

BUILDER_ROLE = "builder"  # every cell's builder stage; its final stage uses cell.runtime_role


@dataclass
class BuildResult:
    cell: Cell
    status: str  # built | skipped | tested (unchanged, tests ran) | failed
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
    base_ids: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # known only at build time: io.imagegen.cuda.archs
    epoch: int | None = None  # SOURCE_DATE_EPOCH (reproduce.source_date_epoch)


# --- the inputs digest: one recipe --------------------------------------------------------------


def inputs_digest(parts: dict[str, bytes | str]) -> str:
    """sha256 over {name: content}, independent of order: "sha256:<hex>"."""
    h = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        data = value.encode() if isinstance(value, str) else value
        h.update(key.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    return "sha256:" + h.hexdigest()


def build_inputs(rendered: render.Rendered, base_ids: dict[str, str], **extra: bytes | str) -> dict[str, bytes | str]:
    """What a cell's build reads, by name: the rendered files, the static context scripts
    (the recipe's context_files), the base images' IDs (``base:<role>``), plus ``extra`` (what a
    caller adds: the staged lock files and closure, or the lock file for the quick key)."""
    parts: dict[str, bytes | str] = dict(rendered.files)
    for rel, src in recipe.of(rendered.cell).context_files.items():
        parts[rel] = src.read_bytes()
    for role, image_id in base_ids.items():
        parts[f"base:{role}"] = image_id
    parts.update(extra)
    return parts


def quick_key(rendered: render.Rendered, base_ids: dict[str, str], lock_bytes: bytes, kernel_label: str = "") -> str:
    """The cheap fingerprint of the same inputs: no staging, no closure (the lock file stands for both).
    kernel_label: a GPU cell's io.imagegen.cuda.archs from its committed facts (`committed_label`),
    so new facts or coverage rules relabel an image whose lock did not change."""
    extra = {"kernel_label": kernel_label} if kernel_label else {}
    if os.environ.get("SOURCE_DATE_EPOCH"):  # otherwise it comes from the bases, whose IDs are in here
        extra["source_date_epoch"] = os.environ["SOURCE_DATE_EPOCH"].strip()
    return inputs_digest(build_inputs(rendered, base_ids, lock=lock_bytes, **extra))


def committed_label(cell: Cell, lock_file: Path) -> str:
    """io.imagegen.cuda.archs from the facts next to the lock ("" for a CPU cell or without facts):
    what `prepare` labels the image with once the facts are current (no scanning here)."""
    if cell.device != "gpu":
        return ""
    from . import gpu_archs

    facts = gpu_archs.read_facts(lock_file)
    return gpu_archs.label_value(cell, gpu_archs.cell_coverage(cell, facts)) or ""


def up_to_date(digest: str | None, tagged: str | None, *, force: bool = False) -> bool:
    """The skip decision: the tag already holds an image built from exactly these inputs."""
    return not force and digest is not None and tagged == digest


def stamp_path(cell: Cell) -> Path:
    return paths.stamps_dir() / f"{cell.id}.json"


def stamped_digest(cell: Cell, quick: str) -> str | None:
    """The inputs digest stamped for ``cell`` when its quick key was ``quick``, else None."""
    try:
        data = json.loads(stamp_path(cell).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("quick") != quick:
        return None
    return data.get("digest")


def write_stamp(cell: Cell, quick: str, digest: str) -> None:
    stamp = stamp_path(cell)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"quick": quick, "digest": digest}))


def base_ids(cell: Cell, refs: dict[str, str] | None = None) -> dict[str, str]:
    """{role: image ID} of the cell's builder and runtime bases ("missing" when not in the engine)."""
    api = engine.api()
    base = cell.base_spec
    out = {}
    for role in (BUILDER_ROLE, cell.runtime_role):
        ref = (refs or {}).get(role) or base.role_ref(cell.base, role)
        try:
            out[role] = api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            out[role] = "missing"
    return out


# --- the lock of a cell --------------------------------------------------------------------------


def lock_path(m: Matrix, cell: Cell) -> Path:
    """The committed lock file of a cell: ``locks/<cell id>.txt`` beside the matrix."""
    return m.path.resolve().parent / "locks" / f"{cell.id}.txt"


def lock_request(cell: Cell) -> lockfile.LockRequest:
    """What to lock for a cell: its requirements for its Python, glibc and indexes, plus the builder tools."""
    base = cell.base_spec
    return lockfile.LockRequest(
        requirements=list(cell.requirements),
        python=cell.python,
        glibc=base.glibc or "2.17",
        arch="x86_64",
        indexes=[(i.name, i.kind, i.url) for i in cell.indexes],
        extra_tools=list(compat.build_tools()),
        cell_id=cell.id,
        regenerate=f"imagegen lock --variant {cell.ref}",
    )


def lock_requests(m: Matrix, cells: list[Cell]) -> dict[str, tuple[lockfile.LockRequest, Path]]:
    """{cell id: (request, lock path)} for `imagegen lock`."""
    return {c.id: (lock_request(c), lock_path(m, c)) for c in cells}


def ensure_lock(m: Matrix, cell: Cell, *, refresh: bool = False) -> tuple[lockfile.Lock, Path]:
    """The cell's lock: the committed file if it matches the cell's requirements, else a new resolution."""
    path = lock_path(m, cell)
    req = lock_request(cell)
    if path.exists() and not refresh:
        lk = lockfile.read_lock(path)
        if lockfile.lock_matches(lk, req):
            return lk, path
        log(f"{cell.ref}: {path.name} is stale (the cell's requirements changed); locking again")
    log(f"{cell.ref}: resolving {', '.join(cell.requirements)} for Python {cell.python}")
    lk = lock_stage.resolve(req, cell_id=cell.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    lockfile.write_lock(lk, path)
    return lk, path


# --- prepare -------------------------------------------------------------------------------------


def closure_inputs(cell: Cell, lpath: Path) -> closurefile.ClosureInputs:
    """What the cell's ELF closure depends on (no network, no engine): see imagegen.closurefile."""
    base = cell.base_spec
    gpu = cell.fw.versions[cell.version].gpu if cell.device == "gpu" else None
    return closurefile.ClosureInputs(
        lock_sha256=closurefile.lock_sha256(lpath), runtime_base=base.role_ref(cell.base, cell.runtime_role),
        suite=base.suite or "bookworm", mirror=base.mirror, arch="amd64",
        host_provided=tuple(sorted(compat.cuda().host_provided)),
        # sonames NEEDED only by libraries never loaded
        ignore=tuple(sorted(gpu.closure_ignore)) if gpu else ())


def closure_status(m: Matrix, cells: list[Cell]) -> list[tuple[str, Path, str]]:
    """(cell id, closure path, up-to-date | stale | missing) for each cell with a lock file (no network)."""
    rows = []
    for cell in cells:
        lpath = lock_path(m, cell)
        if lpath.exists():
            path = closurefile.path_for(lpath)
            rows.append((cell.id, path, closurefile.status(path, closure_inputs(cell, lpath))))
    return rows


def ensure_closure(m: Matrix, cell: Cell) -> tuple[Path, list[str]]:
    """The cell's committed closure file and its packages, resolved (and written) when missing or stale:
    `imagegen lock --closure`. Needs the lock, the runtime base (bootstrapped when missing) and the wheels."""
    lk, lpath = ensure_lock(m, cell)
    runtime_ref = bases.ensure_role(cell.base, cell.runtime_role, spec=cell.base_spec)
    packages = _closure_packages(cell, lpath, runtime_ref, wheelhouse.fetch(lk))
    return closurefile.path_for(lpath), packages


def _closure_packages(cell: Cell, lpath: Path, runtime_ref: str, wheels: list[Path]) -> list[str]:
    """Debian packages the environment's ELF closure needs on the runtime base: the committed
    ``locks/<cell>.closure.json`` when its inputs match (no Debian index read), else resolved
    again and written there (commit it)."""
    inputs = closure_inputs(cell, lpath)
    path = closurefile.path_for(lpath)
    committed = closurefile.read_current(path, inputs)
    if committed is not None:
        lacking = sorted(committed.base_sonames - bases.role_sonames(runtime_ref))
        if not lacking:
            return list(committed.packages)
        log(f"{cell.ref}: the runtime base no longer has {', '.join(lacking[:3])}, which {path.name} counts on; "
            "resolving the closure again")
    else:
        log(f"{cell.ref}: {path.name} is {closurefile.status(path, inputs)} (its lock or base changed); "
            "resolving the closure")
    clos = closure.compute_closure(
        wheels, bases.role_sonames(runtime_ref), suite=inputs.suite, arch=inputs.arch, mirror=inputs.mirror,
        host_provided=set(inputs.host_provided), ignore=list(inputs.ignore),
    )
    closurefile.write(path, cell.ref, inputs, clos.to_dict())
    log(f"{cell.ref}: wrote {path} ({len(clos.packages)} package(s)); commit it beside the lock")
    return list(clos.packages)


def prepare(m: Matrix, cell: Cell, workdir: Path, rendered: render.Rendered | None = None) -> Prepared:
    """Lock, bases, wheelhouse, closure and the build context ``workdir/<cell id>``, with its inputs digest."""
    rendered = rendered or render.render_cell(m, cell)
    rec = recipe.of(cell)
    lk, lpath = ensure_lock(m, cell)
    base = cell.base_spec
    refs = {role: bases.ensure_role(cell.base, role, spec=base) for role in (BUILDER_ROLE, cell.runtime_role)}
    wheels = wheelhouse.fetch(lk)
    labels = _kernel_labels(cell, lk, lpath, wheels)
    ids = base_ids(cell, refs)
    clos_packages = _closure_packages(cell, lpath, refs[cell.runtime_role], wheels)
    ctx = workdir / cell.id
    if ctx.exists():
        shutil.rmtree(ctx)
    ctx.mkdir(parents=True)
    for rel, content in rendered.files.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(content)
    for rel, src in rec.context_files.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, ctx / rel)
    extra = cell.fw.versions[cell.version].runtime_packages
    packages = sorted(set(clos_packages) | set(extra))
    closure_txt = "".join(f"{p}\n" for p in packages)
    (ctx / "imagegen" / "closure.txt").write_text(closure_txt)
    wheelhouse.stage(lk, ctx)
    staged: dict[str, bytes | str] = {"imagegen/closure.txt": closure_txt,
                                      "wheels/requirements.lock": (ctx / "wheels" / "requirements.lock").read_bytes()}
    if rec.bytecode.smoke:
        # traced at build time: the bytecode of what the first inference loads (compile_bytecode.py)
        smoke = compat.smoke_script(cell.fw).read_bytes()
        (ctx / "imagegen" / "smoke.py").write_bytes(smoke)
        staged["imagegen/smoke.py"] = smoke
    if (ctx / "wheels" / "tools.lock").exists():
        staged["wheels/tools.lock"] = (ctx / "wheels" / "tools.lock").read_bytes()
    for k, v in labels.items():
        staged[f"label:{k}"] = v
    epoch = reproduce.source_date_epoch(list(refs.values()))
    staged["source_date_epoch"] = str(epoch)
    digest = inputs_digest(build_inputs(rendered, ids, **staged))
    return Prepared(cell=cell, context=ctx, digest=digest, refs=refs, closure=packages, lock_path=lpath,
                    base_ids=ids, labels=labels, epoch=epoch)


def _kernel_labels(cell: Cell, lk, lpath: Path, wheels: list[Path]) -> dict[str, str]:
    """io.imagegen.cuda.archs for a GPU cell, from the CUDA kernels of its locked wheels (facts
    committed next to the lock, else computed from the fetched wheels and written there). "" when no
    wheel ships kernels. Raises UserInputError when the cell's gpu_archs cannot be served."""
    if cell.device != "gpu":
        return {}
    from . import gpu_archs

    facts = gpu_archs.ensure_facts(lk, lpath, {w.sha256: p for w, p in zip(lk.wheels, wheels, strict=True)})
    why = gpu_archs.check_readable(cell, facts) or gpu_archs.check_targets(cell, facts)
    if why:
        raise UserInputError(f"{cell.ref}: {why}")
    return {gpu_archs.LABEL: gpu_archs.label_value(cell, gpu_archs.cell_coverage(cell, facts)) or ""}


# --- interrupts ------------------------------------------------------------------------------------


def abort_cleanup(tracker: Tracker = ACTIVE) -> None:
    """Ctrl-C/SIGTERM: remove step containers still running, untagged new images and build contexts,
    and stop the host pips resolving or downloading. Best effort; the tags were never moved."""
    items = tracker.snapshot()
    remove_created(items["containers"], items["images"], tracker.ordered("steps"), tracker.ordered("inflight"),
                   tracker.ordered("buildx"))
    try:
        hostpip.terminate_children()
    except Exception:  # noqa: BLE001 - best effort while exiting
        pass
    for d in items["workdirs"]:
        flock.remove_tree(Path(d))


# --- build ---------------------------------------------------------------------------------------


def _unchanged(cell: Cell, digest: str, *, run_tests: bool, progress: Progress, junit_dir: Path | None,
               t0: float) -> BuildResult:
    """The tag already holds an image built from these inputs. Skip it only if that exact image ID has a
    passing test record (testrecord); otherwise run the suite on it now (unless --no-test)."""
    from . import testrecord, testrun

    info = engine.api().inspect_image(cell.local_ref)
    if not run_tests or testrecord.find(info["Id"]):
        progress.finish(cell, "up to date (skipped)")
        note = "inputs unchanged" if testrecord.find(info["Id"]) else "inputs unchanged; untested (--no-test)"
        return BuildResult(cell, "skipped", image_id=info["Id"], size=info["Size"],
                           seconds=time.monotonic() - t0, message=note)
    progress.update(cell, "inputs unchanged; no passing test record for this image: testing")
    summary = testrun.test_image(cell, info["Id"], inputs_digest=digest, junit_dir=junit_dir)
    if not summary.ok:
        raise GateFailed(f"{cell.ref}: image {info['Id'][:19]} (inputs unchanged) failed its tests "
                         f"({'; '.join(summary.reasons())[:400] or 'no checks ran'}); it has no test record, so "
                         f"`imagegen publish` refuses it; JUnit XML: {summary.junit_path}")
    progress.finish(cell, "tested")
    return BuildResult(cell, "tested", image_id=info["Id"], size=info["Size"], seconds=time.monotonic() - t0,
                       message="inputs unchanged; tests ran (no passing record for this image)")


def remove_superseded(image_id: str) -> None:
    """The tag moved to a new image: remove the old one if nothing else names or uses it (no force:
    the engine refuses while another tag or a container holds it), so rebuilds do not pile up
    dangling images."""
    try:
        if not engine.api().inspect_image(image_id).get("RepoTags"):
            engine.api().remove_image(image_id)
    except (docker.errors.APIError, *CONNECTION_LOST):
        pass


def _evict_and_raise(m: Matrix, cell: Cell, exc: ImagegenError) -> None:
    """Installing the locked wheels failed in the builder: hash the host cache's copies of the
    cell's wheels again, remove the corrupt ones, and name them in the one error line."""
    try:
        bad = wheelhouse.evict_corrupt(lockfile.read_lock(lock_path(m, cell)))
    except (OSError, ImagegenError):
        raise exc from None
    if bad:
        raise ImagegenError(f"{cell.ref}: build failed: {', '.join(bad)} in the wheel cache did not match its "
                            f"sha256 (corrupt); removed it: run the build again to fetch it afresh") from None
    raise exc from None


def build_one(m: Matrix, cell: Cell, *, force: bool, run_tests: bool, progress: Progress,
              keep_cache: bool = False, junit_dir: Path | None = None, no_cache: bool = False,
              path: BuildPath | Callable[[], BuildPath] = CLASSIC) -> BuildResult:
    """Build one cell unless its tag holds the same inputs; test it; tag it. ``path``: the build path, or
    a callable that chooses it (called only when a build is needed)."""
    t0 = time.monotonic()
    progress.start(cell)
    rendered = render.render_cell(m, cell)  # once per build
    lpath = lock_path(m, cell)
    if not force:
        quick = quick_key(rendered, base_ids(cell), lpath.read_bytes() if lpath.exists() else b"",
                          committed_label(cell, lpath))
        stamped = stamped_digest(cell, quick)
        if up_to_date(stamped, current_digest(cell.local_ref)):
            return _unchanged(cell, stamped, run_tests=run_tests, progress=progress, junit_dir=junit_dir, t0=t0)
    with _owned_context() as workdir:  # reaps the contexts of killed builds
        log_path = paths.build_log(cell.id)
        image_id = None
        tagged = False
        step_images: list[str] = []
        try:
            progress.update(cell, "preparing: lock, bases, wheelhouse, closure")
            prep = prepare(m, cell, workdir, rendered)
            quick = quick_key(rendered, prep.base_ids, prep.lock_path.read_bytes(), committed_label(cell, prep.lock_path))
            if up_to_date(prep.digest, current_digest(cell.local_ref), force=force):
                write_stamp(cell, quick, prep.digest)
                return _unchanged(cell, prep.digest, run_tests=run_tests, progress=progress, junit_dir=junit_dir, t0=t0)
            if callable(path):
                path = path()
            if path.kind != "buildkit":  # the same recipe in the classic builder's syntax (no RUN --mount)
                classic = render.render_cell(m, cell, buildkit=False).files["Dockerfile"]
                (prep.context / "Dockerfile").write_text(classic)
            started = _now()
            try:
                image_id = build_image(path, cell, prep.context, prep.digest, prep.closure, log_path, progress,
                                       extra_labels=prep.labels, no_cache=no_cache, step_images=step_images,
                                       epoch=prep.epoch).image_id
            except ImagegenError as exc:
                if "install: " in str(exc):  # a wheel that fails to install may be a corrupt cache copy
                    _evict_and_raise(m, cell, exc)
                raise
            ACTIVE.add("images", image_id)
            image_id = _normalized(cell, image_id, prep.epoch, progress)
            report = coldstart.annotate_prune_report(cell.ref, prune_report_from_log(log_path))
            tests = None
            if run_tests:
                from . import testrun

                def tests():
                    progress.update(cell, "testing")
                    return testrun.test_image(cell, image_id, inputs_digest=prep.digest, junit_dir=junit_dir)
            tag_if_tested(cell.ref, cell.local_ref, image_id, tests)
            tagged = True
            write_stamp(cell, quick, prep.digest)
            _record_build(prep, path, image_id, started)
            size = engine.api().inspect_image(image_id)["Size"]
            progress.finish(cell, "built")
            return BuildResult(cell, "built", image_id=image_id, seconds=time.monotonic() - t0, size=size,
                               log_path=log_path, prune_report=report, closure=prep.closure)
        except BaseException:
            if image_id and not tagged:  # interrupted or failed before the tag moved
                discard_untagged(image_id)
            raise
        finally:
            _drop_steps(step_images, image_id, remove=not keep_cache)


def tag_if_tested(ref: str, local_ref: str, image_id: str, tests: Callable[[], Summary] | None) -> None:
    """Run `tests` (None: --no-test), then move `local_ref` to `image_id`: the tag never names an image
    whose tests failed. GateFailed (the tag untouched) when they fail. The image the tag leaves behind
    is removed when nothing else names it."""
    if tests is not None:
        summary = tests()
        if not summary.ok:
            raise GateFailed(f"{ref}: built image {image_id[:19]} failed its tests "
                             f"({'; '.join(summary.reasons())[:400] or 'no checks ran'}); the tag was not "
                             f"moved; JUnit XML: {summary.junit_path}")
    previous = current_image_id(local_ref)
    engine.api().tag(image_id, local_ref.rsplit(":", 1)[0], local_ref.rsplit(":", 1)[1], force=True)
    ACTIVE.discard("images", image_id)
    if previous and previous != image_id:
        remove_superseded(previous)


def discard_untagged(image_id: str) -> None:
    """A build that failed or was interrupted: remove its image if nothing else uses it (its parents:
    the build's own step images go separately, layers reused from the cache stay)."""
    try:
        engine.api().remove_image(image_id, noprune=True)
    except (docker.errors.APIError, *CONNECTION_LOST):
        pass
    ACTIVE.discard("images", image_id)


def _drop_steps(step_images: list[str], image_id: str | None, *, remove: bool = True) -> None:
    """After a build: its step images removed (unless kept as layer cache), never the image itself, and
    forgotten by the interrupt clean-up."""
    if remove and step_images:
        remove_images(step_images, keep={image_id or ""})
    for step in step_images:
        ACTIVE.discard("steps", step)


@contextlib.contextmanager
def _owned_context():
    """A build-context work directory under the cache root, owned by this process (flock) and removed
    on the way out, whatever happens; an interrupt's clean-up (ACTIVE) knows it meanwhile."""
    root = paths.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    workdir = flock.make_owned_dir(root, paths.CONTEXT_PREFIX)
    ACTIVE.add("workdirs", str(workdir))
    try:
        yield workdir
    finally:
        flock.remove_owned_dir(workdir)
        ACTIVE.discard("workdirs", str(workdir))


def expected_digest(m: Matrix, cell: Cell) -> str:
    """The inputs digest this checkout builds `cell` from ("sha256:<hex>"): the stamp of the build that
    made it when the quick key (rendered files, base IDs, lock, kernel label) still matches, else a full
    `prepare` into a work directory removed afterwards (lock, bases, wheelhouse and closure, as a build
    would; no image is built). What `imagegen test` compares the image's label with."""
    rendered = render.render_cell(m, cell)
    lpath = lock_path(m, cell)
    if lpath.exists():
        stamped = stamped_digest(cell, quick_key(rendered, base_ids(cell), lpath.read_bytes(),
                                                 committed_label(cell, lpath)))
        if stamped:
            return stamped
    with _owned_context() as workdir:
        return prepare(m, cell, workdir, rendered).digest


def test_cells(m: Matrix, cells: list[Cell], **options) -> Summary:
    """`imagegen test`: the image suite on built cells, each image's inputs-digest label checked against
    :func:`expected_digest`. ``options``: those of :func:`imagegen.testrun.test_cells`."""
    from . import testrun

    return testrun.test_cells(cells, {c.id: expected_digest(m, c) for c in cells}, **options)


def rebuild(m: Matrix, cell: Cell, path: BuildPath, progress: Progress) -> tuple[str, Prepared]:
    """Build ``cell`` again from its inputs, cold (no layer cache), untagged and untested: what `verify`
    compares with a published image. Returns (image ID, the prepared inputs); the caller removes the
    image. The build's step images and context are removed here, whatever happens."""
    rendered = render.render_cell(m, cell)
    with _owned_context() as workdir:
        step_images: list[str] = []
        image_id = None
        try:
            prep = prepare(m, cell, workdir, rendered)
            if path.kind != "buildkit":
                (prep.context / "Dockerfile").write_text(render.render_cell(m, cell, buildkit=False).files["Dockerfile"])
            built = build_image(path, cell, prep.context, prep.digest, prep.closure, paths.build_log(f"{cell.id}.verify"),
                                progress, extra_labels=prep.labels, no_cache=True, step_images=step_images,
                                epoch=prep.epoch)
            image_id = built.image_id
            ACTIVE.add("images", image_id)
            image_id = _normalized(cell, image_id, prep.epoch, progress)
            return image_id, prep
        except BaseException:
            if image_id:  # untagged only: a rebuild identical to a tagged image is that image
                remove_images([image_id], keep=set())
                ACTIVE.discard("images", image_id)
            raise
        finally:
            _drop_steps(step_images, image_id)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalized(cell: Cell, image_id: str, epoch: int | None, progress: Progress) -> str:
    """The built image with a config that depends on its inputs only (reproduce.normalize): the image
    itself, or a new one with the same layers (the built one removed). Tracked for interrupts."""
    if epoch is None:
        return image_id
    new = reproduce.normalize(image_id, epoch)
    if new is None:
        warn(f"{cell.ref}: the classic builder on the containerd image store stamps the clock into the image "
             "config; this image is not reproducible (build with BuildKit)")
        return image_id
    if new == image_id:
        return image_id
    progress.update(cell, "config normalised (SOURCE_DATE_EPOCH)")
    ACTIVE.add("images", new)
    try:
        engine.api().remove_image(image_id, noprune=True)
    except (docker.errors.APIError, *CONNECTION_LOST):
        pass
    ACTIVE.discard("images", image_id)
    return new


def _record_build(prep: Prepared, path, image_id: str, started: str) -> None:
    """The build record (provenance.BuildRecord) of the image just tagged. Best effort: a record that
    cannot be written only leaves publish's provenance with the labels alone."""
    from . import __version__, provenance

    try:
        closure_txt = (prep.context / "imagegen" / "closure.txt").read_bytes()
        info = engine.current()
        rec = provenance.BuildRecord(
            cell=prep.cell.ref, image_id=image_id, config_digest=engine.config_digest(image_id),
            inputs_digest=prep.digest, revision=git_revision(), source=SOURCE_URL,
            source_date_epoch=prep.epoch or 0,
            lock={"path": _rel(prep.lock_path), "sha256": wheelhouse.sha256_file(prep.lock_path)},
            closure={"packages": prep.closure, "sha256": hashlib.sha256(closure_txt).hexdigest()},
            bases={role: {"ref": ref, "id": prep.base_ids.get(role, "")} for role, ref in prep.refs.items()},
            build_path=path.kind, builder=path.builder, buildkit_version=path.buildkit_version,
            engine={"version": info.server_version, "api": info.api_version, "image_store": info.image_store},
            imagegen=__version__, command=["imagegen", *sys.argv[1:]], started=started, finished=_now())
        provenance.write_record(rec)
    except (OSError, ImagegenError) as exc:
        warn(f"{prep.cell.ref}: no build record written ({exc})")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def build_cells(m: Matrix, cells: list[Cell], *, jobs: int = 1, force: bool = False, run_tests: bool = True,
                keep_cache: bool = False, junit_dir: Path | None = None, no_cache: bool = False,
                builder: str | None = None) -> list[BuildResult]:
    """Build ``cells`` (``jobs`` at a time), in matrix order; a failed cell is a "failed" result, not an error.
    ``builder``: a buildx builder name (None: the build path buildkit.choose picks). Raises
    UserInputError (exit 2, before anything is built) when the requested path cannot be had."""
    from rich.progress import Progress as RichProgress
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    engine.client()  # fail fast, with the remedy, when the daemon is down
    path = _PathOnce(builder)
    if builder or os.environ.get(buildkit.ENV_SWITCH) or os.environ.get("BUILDX_BUILDER"):
        path()  # asked for: a path that cannot be had is exit 2 before anything runs
    results: list[BuildResult] = []
    columns = [SpinnerColumn(), TextColumn("{task.description}"), TextColumn("[dim]{task.fields[step]}"),
               TimeElapsedColumn()]
    options = dict(force=force, run_tests=run_tests, keep_cache=keep_cache, junit_dir=junit_dir, no_cache=no_cache,
                   path=path)
    with RichProgress(*columns, console=err, transient=False, disable=not err.is_terminal) as prog:
        progress = Progress(prog if err.is_terminal else None)
        if jobs <= 1 or len(cells) == 1:
            for cell in cells:
                results.append(_guarded(m, cell, progress, **options))
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_guarded, m, c, progress, **options): c for c in cells}
                for fut in as_completed(futures):
                    results.append(fut.result())
    order = {c.id: i for i, c in enumerate(cells)}
    return sorted(results, key=lambda r: order[r.cell.id])


class _PathOnce:
    """The run's build path, chosen once, when the first cell needs a build (a run whose cells are all
    up to date never asks buildx: the no-op rebuild stays under a second). Thread-safe."""

    def __init__(self, builder: str | None) -> None:
        self.builder = builder
        self._path: BuildPath | None = None
        self._lock = threading.Lock()

    def __call__(self) -> BuildPath:
        with self._lock:
            if self._path is None:
                info = engine.current()
                self._path = buildkit.choose(self.builder, engine_version=f"Docker {info.server_version}, "
                                                                          f"API {info.api_version}")
                log(f"building with {self._path.describe()} on Docker {info.server_version} "
                    f"({info.image_store} image store)")
            return self._path


def _guarded(m: Matrix, cell: Cell, progress: Progress, **options) -> BuildResult:
    t0 = time.monotonic()
    try:
        return build_one(m, cell, progress=progress, **options)
    except ImagegenError as exc:
        progress.finish(cell, "failed")
        return BuildResult(cell, "failed", seconds=time.monotonic() - t0, message=str(exc),
                           log_path=paths.build_log(cell.id))
