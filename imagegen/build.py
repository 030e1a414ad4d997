"""The engine side of a build: run a prepared build context on the build path of this run (BuildKit
through `docker buildx`, see ``imagegen.buildkit``; or the classic builder through the Docker SDK's
streamed low-level API), log it, and keep track of what a build in flight has created so an
interrupt can remove it. ``build_image`` is the one entry point; nothing above it branches on the path.

Orchestration (what to build, when to skip, test before tag) is ``imagegen.pipeline``'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import docker.errors
import requests.exceptions
import urllib3.exceptions

from . import engine
from .buildkit import ANSI as _ANSI
from .buildkit import SCRIPT_ERROR as _SCRIPT_ERROR
from .buildkit import BuildPath
from .console import err, log
from .errors import EngineError, ImagegenError
from .labels import LABEL_CELL, LABEL_CLOSURE, LABEL_DIGEST, OCI_CREATED, OCI_REVISION, OCI_SOURCE, SOURCE_URL
from .matrix import Cell
from .scripts import contract

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
_RUNNING = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$")
_CACHED = " ---> Using cache"  # the classic builder's line before the ID of a step image it reused
# What a connection that dies mid-stream raises through docker-py (requests/urllib3)
CONNECTION_LOST = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError)



class Tracker:
    """What builds in flight have created (step containers, untagged images, the step images each
    build committed, context directories), so that an interrupt can remove it. Thread-safe; values
    are IDs or paths, kept in the order they were added (step images: parents before children)."""

    KINDS = ("containers", "images", "steps", "workdirs", "inflight", "buildx")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, None]] = {k: {} for k in self.KINDS}

    def add(self, kind: str, value: str) -> None:
        with self._lock:
            self._items[kind][value] = None

    def discard(self, kind: str, value: str) -> None:
        with self._lock:
            self._items[kind].pop(value, None)

    def snapshot(self) -> dict[str, set[str]]:
        """A copy: {kind: values}."""
        with self._lock:
            return {k: set(v) for k, v in self._items.items()}

    def ordered(self, kind: str) -> list[str]:
        """The values of one kind, oldest first."""
        with self._lock:
            return list(self._items[kind])


ACTIVE = Tracker()  # this process's builds


#: How long an interrupt waits for the engine to commit the step it was running, by instruction. The
#: classic builder finishes the step in flight after its client is gone, then commits it: measured on
#: engine 20.10, an interrupt during `COPY --from=builder /opt/venv` (770 MB) left an untagged image
#: 3 s after imagegen had exited. A RUN step's container is removed first, so it commits nothing.
LATE_COMMIT_WAIT = {"COPY": 120.0, "ADD": 120.0, "RUN": 3.0}
LATE_COMMIT_DEFAULT = 5.0


def inflight_value(parent: str, instruction: str, started: float) -> str:
    """The tracker's record of a build's step in flight: its parent image, instruction keyword, and
    the build's start (epoch seconds)."""
    return f"{parent}\t{instruction.split()[0].upper() if instruction.strip() else '?'}\t{started:.0f}"


#: After the first late commit: how long the image list must stay unchanged before the search ends.
#: The engine notices the client is gone only between instructions, so the metadata steps after a
#: late COPY (ENV, WORKDIR, USER: no container, ~0.1 s each) can commit children of it first; an image
#: with children cannot be removed. CI, engine 20.10: a COPY and three such children, left behind.
LATE_COMMIT_SETTLE = 3.0
LATE_COMMIT_MAX = 60.0  # the whole search after the first late commit, seconds


def late_commits(inflight: list[str], *, poll: float = 0.5, settle: float = LATE_COMMIT_SETTLE) -> list[str]:
    """After an interrupt: wait for the images the engine commits for the steps it was running
    (``inflight_value`` records), up to LATE_COMMIT_WAIT per instruction, then for their descendants
    (later steps the engine ran before it noticed the client was gone) until the list has been
    unchanged for ``settle`` seconds (LATE_COMMIT_MAX at most). Returns their IDs, children before
    parents, so they can be removed in that order. Only untagged images created since their build
    started count. Best effort: an unreachable engine returns what was found."""
    api = engine.api()
    pending: dict[str, tuple[float, float]] = {}  # parent -> (deadline, build start)
    for value in inflight:
        parent, kind, started = value.split("\t")
        wait = LATE_COMMIT_WAIT.get(kind, LATE_COMMIT_DEFAULT)
        pending[parent] = (time.monotonic() + wait, float(started))
    if any(LATE_COMMIT_WAIT.get(v.split("\t")[1], 0) > 10 for v in inflight):
        err.print("waiting for the engine to finish the step it was running, to remove what it commits",
                  markup=False)
    roots: list[str] = []  # the late commits found, in the order found
    found: list[str] = []  # roots and their descendants, parents before children
    quiet_since = cap = None
    while True:
        try:
            summaries = api.images(all=True)
        except (docker.errors.APIError, *CONNECTION_LOST):
            break
        by_parent: dict[str, list[dict]] = {}
        for img in summaries:
            by_parent.setdefault((img.get("ParentId") or "").replace("sha256:", ""), []).append(img)
        for parent, (deadline, started) in list(pending.items()):
            kids = [img["Id"] for key, imgs in by_parent.items() if key and key.startswith(parent) for img in imgs
                    if not [t for t in (img.get("RepoTags") or []) if t != "<none>:<none>"]
                    and img.get("Created", 0) >= started - 1]
            if kids:
                del pending[parent]
                roots += [k for k in kids if k not in roots]
            elif time.monotonic() > deadline:
                del pending[parent]
        now_found: list[str] = []
        queue = list(roots)
        while queue:  # breadth first: parents before their children
            image = queue.pop(0)
            if image not in now_found:
                now_found.append(image)
                queue += [img["Id"] for img in by_parent.get(image.replace("sha256:", ""), [])]
        now = time.monotonic()
        if now_found != found or quiet_since is None:
            found, quiet_since = now_found, now
        if roots and cap is None:
            cap = now + LATE_COMMIT_MAX
        if not pending and (not roots or now - quiet_since >= settle or now > cap):
            break
        time.sleep(poll)
    return list(reversed(found))


def step_containers(inflight: list[str]) -> list[str]:
    """The containers of the steps in flight (``inflight_value`` records) that the build never reported:
    an interrupt can come after the engine created a step's container and before its "Running in" line
    reached imagegen (CI, engine 20.10: a finished RUN container, Exited (0), left behind). A step
    container is created from the step's parent image: those created from a record's parent since its
    build started are this build's. Best effort: an unreachable engine returns none."""
    api = engine.api()
    try:
        listed = api.containers(all=True)
    except (docker.errors.APIError, *CONNECTION_LOST):
        return []
    out = []
    for value in inflight:
        parent, _kind, started = value.split("\t")
        for c in listed:
            image_id = (c.get("ImageID") or "").replace("sha256:", "")
            if image_id.startswith(parent) and c.get("Created", 0) >= float(started) - 1 and c["Id"] not in out:
                out.append(c["Id"])
    return out


def remove_created(containers: set[str], images: set[str], steps: list[str] = (),
                   inflight: list[str] = (), buildx: list[str] = ()) -> None:
    """Best effort: cancel the buildx builds in flight (``buildx``) and remove what their exporters
    wrote (buildkit.cancel_builds), remove step containers (first: a running step holds its parent
    image), the images the engine commits for the steps it was still running (``inflight``, see
    late_commits), untagged new images, then the step images the builds committed (``steps``, oldest
    first; removed newest first, with noprune, see remove_images). An unreachable engine is ignored."""
    try:
        if buildx:
            from . import buildkit

            images = set(images) | set(buildkit.cancel_builds(list(buildx)))
        api = engine.api()
        for cid in containers:
            try:
                api.remove_container(cid, force=True)
            except docker.errors.APIError:
                pass
        for image in late_commits(list(inflight)) if inflight else ():
            try:
                api.remove_image(image, noprune=True)
            except docker.errors.APIError:
                pass
        for cid in step_containers(list(inflight)) if inflight else ():
            try:
                api.remove_container(cid, force=True)
            except docker.errors.APIError:
                pass
        for image in images:
            try:
                api.remove_image(image, noprune=True)
            except docker.errors.APIError:
                pass
        remove_images(list(steps), keep=set())
    except ImagegenError:
        pass


class Progress:
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


def stamp_labels(cell: Cell, context: Path, digest: str, closure: list[str],
                 extra_labels: dict[str, str] | None = None, *, epoch: int | None = None) -> None:
    """Append one LABEL instruction to the context's Dockerfile (the API's `labels` would add one build
    step per label): the inputs ``digest`` (computed before, over the rendered file), the cell, the
    closure packages, the git revision, creation time and source, and ``extra_labels``. Both build
    paths build the same file. The creation time is ``epoch`` (SOURCE_DATE_EPOCH, see reproduce), the
    clock only when a caller gives none."""
    labels = {
        LABEL_DIGEST: digest,
        LABEL_CELL: cell.ref,
        OCI_CREATED: (datetime.fromtimestamp(epoch, timezone.utc) if epoch is not None else datetime.now(timezone.utc)
                      ).strftime("%Y-%m-%dT%H:%M:%SZ"),
        OCI_REVISION: git_revision(),
        OCI_SOURCE: SOURCE_URL,
        LABEL_CLOSURE: ",".join(closure),
        **(extra_labels or {}),
    }
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "LABEL " + " \\\n      ".join(
        f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "\n")


@dataclasses.dataclass(frozen=True)
class Built:
    """A build's result: the image ID in the engine, its config digest when the build path knows it
    (BuildKit's metadata; the classic builder on the graph-driver store, where they are equal), and the
    step images this build committed (classic path only, build order)."""

    image_id: str
    config_digest: str | None
    step_images: list[str]


def build_image(path: BuildPath, cell: Cell, context: Path, digest: str, closure: list[str], log_path: Path,
                progress: Progress, *, no_cache: bool = False, tracker: Tracker = ACTIVE,
                extra_labels: dict[str, str] | None = None, step_images: list[str] | None = None,
                epoch: int | None = None) -> Built:
    """Build ``context`` on ``path`` (see buildkit.choose): the same Dockerfile, labels, progress lines,
    one-line errors and interrupt records on both paths. ``step_images`` (classic path) fills as the
    steps complete, so a caller still holds them when the build fails mid-way. ``epoch``: the
    SOURCE_DATE_EPOCH build argument and the created label (reproduce). Raises ImagegenError
    (EngineError when the engine stopped answering) with the log's last lines on stderr."""
    build_args = {"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {}
    if path.kind != "buildkit":
        image_id, steps = docker_build(cell, context, digest, closure, log_path, progress, no_cache=no_cache,
                                       tracker=tracker, extra_labels=extra_labels, step_images=step_images,
                                       epoch=epoch)
        image_id = current_image_id(image_id) or image_id  # the full "sha256:<64 hex>" ID, as BuildKit gives
        return Built(image_id, image_id if engine.current().id_is_config_digest else None, steps)
    from . import buildkit

    stamp_labels(cell, context, digest, closure, extra_labels, epoch=epoch)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    failure, image_id, config_digest, tail, script_error = buildkit.run(
        path, cell.ref, context, digest, log_path,
        lambda text, n, m: progress.update(cell, text, None if n is None else n - 1, m), no_cache=no_cache,
        tracker=tracker, build_args=build_args)
    if failure or not image_id:
        lost = None
        if not engine.answers():
            lost = failure or "no answer"
        _raise_build_failure(cell, failure or "the build produced no image", script_error, tail, log_path, lost)
    if current_image_id(image_id) is None:
        raise ImagegenError(f"{cell.ref}: buildx builder {path.builder} ({path.driver} driver) built {image_id[:19]} "
                            f"but did not load it into the engine at {engine.engine_key()}: use a builder of this "
                            f"engine (`--builder default`) or one whose --load reaches it; log: {log_path}")
    if config_digest and config_digest != image_id:  # the containerd store: remember what inspect cannot say
        engine.remember_config_digest(image_id, config_digest)
    return Built(image_id, config_digest or (image_id if engine.current().id_is_config_digest else None), [])


def _raise_build_failure(cell: Cell, reason: str, script_error: str | None, tail, log_path: Path,
                         lost: str | None) -> None:
    """The one error line of a failed build (both paths)."""
    if lost is not None:
        raise EngineError(f"{cell.ref}: the Docker engine at {engine.engine_key()} stopped answering mid-build "
                          f"({lost}); nothing was tagged; log: {log_path}")
    if any("no space left on device" in (text or "").lower() for text in (reason, script_error)):
        raise ImagegenError(f"{cell.ref}: disk full while building (free space with `docker system prune`); "
                            f"log: {log_path}")
    if script_error:  # our own script named the cause: report that, not the builder's exit code
        reason = script_error
    else:
        err.print(f"--- last lines of {log_path} ---", markup=False)
        for line in tail:
            err.print(line, markup=False)
    raise ImagegenError(f"{cell.ref}: build failed: {reason[:300]}; full log: {log_path}")


class _ClassicLog:
    """The classic builder's JSON stream, chunk by chunk (:meth:`feed`): each line goes to the log file
    and the progress line; the step containers, step images and the step in flight are recorded in the
    tracker as they appear (so an interrupt can remove them); a script's error line and the image ID are
    kept."""

    def __init__(self, cell: Cell, logf, progress: Progress, tracker: Tracker, step_images: list[str]):
        self.cell, self.logf, self.progress, self.tracker = cell, logf, progress, tracker
        self.step_images = step_images
        self.tail: deque[str] = deque(maxlen=25)
        self.image_id: str | None = None
        self.error: str | None = None
        self.script_error: str | None = None
        self.mine: set[str] = set()  # this build's step containers still alive
        self.step_started: tuple[str, float] | None = None
        self.reused = False  # the current step's image came from the cache (or is the FROM image)
        self.parent: str | None = None  # the image the step in flight builds on
        self.inflight: str | None = None  # this build's tracker record of that step
        self.started = time.time()

    def feed(self, chunk: dict) -> None:
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                self._line(line)
        elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        elif "error" in chunk:
            self.fail(chunk.get("error", "").strip())

    def fail(self, error: str, what: str = "") -> None:
        self.error = error
        self.logf.write(f"ERROR: {what}{error}\n")
        if not what:
            self.tail.append(error)

    def _line(self, line: str) -> None:
        s = _STEP.match(line)
        if s:
            self._step(s)
        if line.startswith(_CACHED):
            self.reused = True
        self.logf.write(line + "\n")
        self.tail.append(line)
        if s:
            self.progress.update(self.cell, f"step {s.group(1)}/{s.group(2)} {s.group(3)}", int(s.group(1)) - 1,
                                 int(s.group(2)))
        r = _RUNNING.match(line)
        if r:
            self.tracker.add("containers", r.group(1))
            self.mine.add(r.group(1))
        elif line.startswith("Removing intermediate container "):
            self.tracker.discard("containers", line.split()[-1])
            self.mine = {c for c in self.mine if not line.split()[-1].startswith(c[:12])}
        e = _SCRIPT_ERROR.match(_ANSI.sub("", line).strip())
        if e:
            self.script_error = f"{e.group(1)}: {e.group(2).strip()}"
        i = _IMAGE.match(line)
        if i:
            self.parent = i.group(1)
        if i and not self.reused:
            self.step_images.append(i.group(1))
            self.tracker.add("steps", i.group(1))
        if line.startswith("Successfully built "):
            self.image_id = line.split()[-1]

    def _step(self, s: re.Match) -> None:
        """A `Step N/M : INSTRUCTION` line: time the last step, and record the one now in flight."""
        now = time.monotonic()
        if self.step_started is not None:
            self.logf.write(f"# imagegen: step {self.step_started[0]} took {now - self.step_started[1]:.1f}s\n")
        self.step_started = (s.group(1), now)
        self.reused = s.group(3).upper().startswith("FROM ")
        self.close()
        if self.parent and not self.reused:
            self.inflight = inflight_value(self.parent, s.group(3), self.started)
            self.tracker.add("inflight", self.inflight)

    def close(self) -> None:
        """No step of this build is in flight (a new step began, or the stream ended)."""
        if self.inflight:
            self.tracker.discard("inflight", self.inflight)
            self.inflight = None


def docker_build(cell: Cell, context: Path, digest: str, closure: list[str], log_path: Path, progress: Progress,
                 *, no_cache: bool = False, tracker: Tracker = ACTIVE,
                 extra_labels: dict[str, str] | None = None,
                 step_images: list[str] | None = None, epoch: int | None = None) -> tuple[str, list[str]]:
    """The classic path: build ``context`` through the Docker SDK (labels stamped, see stamp_labels);
    return (image ID, step image IDs).

    The step image IDs are only those this build committed, in build order: neither the ``FROM``
    images nor the step images it reused from the engine's cache ("Using cache"), which belong to
    earlier builds (another cell's, a user's) and must outlive this one.
    The full log goes to ``log_path``. Raises ImagegenError with the log's last lines on stderr."""
    api = engine.api()
    stamp_labels(cell, context, digest, closure, extra_labels, epoch=epoch)
    # filled as the steps complete, so a caller still holds them when the build fails mid-way
    step_images = step_images if step_images is not None else []
    lost: str | None = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8", errors="replace") as logf:
        logf.write(f"# imagegen build {cell.ref} inputs {digest}\n")
        log = _ClassicLog(cell, logf, progress, tracker, step_images)
        try:
            stream = api.build(path=str(context), rm=True, forcerm=True, decode=True, pull=False,
                               nocache=no_cache,
                               buildargs={"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else None)
            for chunk in stream:
                log.feed(chunk)
        except docker.errors.APIError as exc:
            log.error = str(exc).splitlines()[0]
            logf.write(f"ERROR: {log.error}\n")
        except CONNECTION_LOST as exc:
            lost = engine.short_error(exc)
            log.fail(lost, "connection to the engine lost: ")
    log.close()  # the stream ended: the engine has no step in flight for this build
    if lost is not None and not engine.answers():
        # The daemon died or was stopped: what it was running cannot be removed now. Recorded, the
        # next imagegen that reaches this engine removes it (engine.reap_leftovers).
        engine.remember_leftovers(log.mine)
        for cid in log.mine:
            tracker.discard("containers", cid)
        _raise_build_failure(cell, lost, log.script_error, log.tail, log_path, lost)
    if log.error or not log.image_id:
        _raise_build_failure(cell, log.error or "the build produced no image", log.script_error, log.tail, log_path,
                             None)
    return log.image_id, step_images


def git_revision() -> str:
    """HEAD of the checkout imagegen runs from (with -dirty), or "unknown"."""
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
    """Best-effort removal of the untagged step images one build committed (builder stages hold GBs
    of wheels), after a build that succeeded or failed: ``ids`` in build order, removed last first.

    ``noprune``: removing an image never takes its untagged parents with it, so a step image the
    build reused from the cache (an earlier build's, not in ``ids``) is never removed. Tagged
    images and ancestors of the kept image (the engine refuses: it has dependent children) are left
    alone; an engine that stopped answering ends the removal."""
    api = engine.api()
    for image in reversed(ids):
        if any(k and (k.replace("sha256:", "").startswith(image) or image.startswith(k.replace("sha256:", "")[:12]))
               for k in keep):
            continue
        try:
            info = api.inspect_image(image)
            if info.get("RepoTags"):
                continue
            api.remove_image(info["Id"], noprune=True)
        except docker.errors.APIError:
            pass  # a parent of the kept image, or a parent of another build's cache
        except CONNECTION_LOST:
            return  # the engine is gone (it stopped mid-build): nothing can be removed now


# A report line of the prune step: the line itself (classic builder), or BuildKit's plain-progress
# prefix "#12 3.456 " before it
_REPORT_LINE = re.compile(r"^(?:#\d+ \d+\.\d+ )?(" + re.escape(contract.PRUNE_REPORT_MARK) + "|"
                          + re.escape(contract.FATPRUNE_REPORT_MARK) + ")(.*)$")


def prune_report_from_log(log_path: Path) -> dict | None:
    """The prune step's report (bytes saved per slimming rule; the bytecode entry also names what
    was compiled, venv and runtime standard library) from a build log, or None. With
    gpu_archs, fatprune.py's per-library report joins it as the `cuda_archs` rule (bytes saved,
    per library before/after, refused libraries)."""
    report = fat = None
    try:
        for line in log_path.read_text(errors="replace").splitlines():
            m = _REPORT_LINE.match(line)
            if m and m.group(1) == contract.PRUNE_REPORT_MARK and report is None:
                report = json.loads(m.group(2))
            elif m and m.group(1) == contract.FATPRUNE_REPORT_MARK:
                fat = json.loads(m.group(2))
    except (OSError, ValueError):
        return None
    if report is not None and fat is not None:
        contract.merge_cuda_archs(report, fat)
    return report




def current_image_id(ref: str) -> str | None:
    """The image ID ``ref`` points at in the engine, or None."""
    try:
        return engine.api().inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        return None


def current_digest(ref: str) -> str | None:
    """The inputs digest label of the image ``ref`` names, or None (no such image, or no label)."""
    try:
        info = engine.api().inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    return ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_DIGEST)
