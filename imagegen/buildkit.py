"""The BuildKit build path: `docker buildx build`, run as a subprocess through plumbum.

Which path a build takes (`choose`):

- ``DOCKER_BUILDKIT=0`` (the docker CLI's own switch) selects the classic builder (`imagegen.build`,
  the Docker SDK's streamed build);
- ``--builder NAME`` (or buildx's own ``BUILDX_BUILDER``) selects that buildx builder: the engine's
  built-in one (``default``, driver ``docker``), a ``docker-container`` builder, or a remote BuildKit
  (drivers ``remote``, ``kubernetes``: a build farm is just a builder name);
- otherwise BuildKit when ``docker buildx`` answers and its current builder is running, else the
  classic builder (Docker 20.10 without the buildx plugin, Debian 12's ``docker.io``).

Why a subprocess and not the SDK: docker-py cannot drive BuildKit (docker/docker-py#2230, open since
2019); Python tools call the buildx CLI instead (python-on-whales, Ansible's ``docker_image_build``,
aws/deep-learning-containers#5209). Why plumbum and not python-on-whales: imagegen needs three buildx
calls (``version``, ``inspect``, ``build``), a streamed ``--progress=plain`` log it parses line by line,
and the child's process group for Ctrl-C; python-on-whales wraps the whole docker CLI (a dependency
tree of pydantic models) and its streamed build hides the process, which the interrupt clean-up needs.
plumbum is already the design's subprocess tool (trivy runs through it).

Both paths get the same rendered Dockerfile, the same LABEL instruction, the same one-line errors
(our in-build scripts' ``name: error: ...`` lines), the same progress lines and the same interrupt
guarantee: a build stopped by Ctrl-C or SIGTERM leaves no tag moved and no container, image or build
context. On this path BuildKit runs the steps (no step containers or step images exist in the
engine); an interrupt sends SIGINT to buildx, which cancels the solve, then removes any image the
exporter had already written (found by its inputs-digest label, untagged, created since the build
started).

Facts: ``docker buildx ls``/``inspect`` output and ``--metadata-file`` keys are buildx's
(docs.docker.com/reference/cli/docker/buildx/build/#metadata-file): ``containerimage.digest`` is the
image ID in the engine (config digest on the graph-driver store, manifest digest on the containerd
store), ``containerimage.config.digest`` the config digest (present when the result is one manifest:
hence ``--provenance=false``, which also keeps the containerd store from wrapping it in an index).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from .errors import UserInputError

#: The docker CLI's switch between the builders (docs.docker.com/build/buildkit/#getting-started).
ENV_SWITCH = "DOCKER_BUILDKIT"

#: One-line errors our in-build scripts print ("install: error: ...", "sysroot: error: ..."), on either
#: path: the cause to report instead of the builder's "returned a non-zero code"/"did not complete".
SCRIPT_ERROR = re.compile(r"^(\w+): error: (.+)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

_VERSION = re.compile(r"\bv?(\d+\.\d+\.\d+)")
# --progress=plain lines (buildx's progressui printer)
_VERTEX = re.compile(r"^#(\d+) \[(?:(\S+) )?(\d+)/(\d+)\] (.*)$")
_LOG = re.compile(r"^#(\d+) (\d+\.\d+) (.*)$")
_CACHED = re.compile(r"^#(\d+) CACHED$")
_VERTEX_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
_FINAL_ERROR = re.compile(r"^(?:ERROR|error): (.*)$")
_EXPORT = re.compile(r"^#(\d+) (exporting to (?:image|docker image format|oci image format))$")


@dataclasses.dataclass(frozen=True)
class BuildPath:
    """How this run builds: ``kind`` "buildkit" (``builder`` names the buildx builder) or "classic"."""

    kind: str
    builder: str | None = None
    driver: str | None = None
    buildkit_version: str | None = None  # e.g. "v0.8+unknown" (Docker 20.10's embedded BuildKit), "v0.13.2"
    buildx_version: str | None = None  # e.g. "0.13.1"
    why: str = ""

    def describe(self) -> str:
        """One phrase for the log line: "BuildKit (builder default, driver docker, BuildKit v0.8+unknown,
        buildx 0.13.1)" or "the classic builder (no docker buildx plugin)"."""
        if self.kind == "classic":
            return f"the classic builder ({self.why})" if self.why else "the classic builder"
        parts = [f"builder {self.builder}", f"driver {self.driver}"]
        if self.buildkit_version:
            parts.append(f"BuildKit {self.buildkit_version}")
        if self.buildx_version:
            parts.append(f"buildx {self.buildx_version}")
        return f"BuildKit ({', '.join(parts)})"


CLASSIC = BuildPath("classic")


def _env() -> dict[str, str]:
    """The environment for the docker CLI: this process's, read now (plumbum's `local.env` is a copy
    taken at import, which would miss a DOCKER_HOST set since)."""
    return dict(os.environ)


def _docker(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run `docker ARGS`; (exit code, stdout, stderr). A missing docker CLI is exit code 127."""
    from plumbum import local
    from plumbum.commands.processes import ProcessTimedOut

    exe = shutil.which("docker", path=os.environ.get("PATH"))  # this process's PATH, not plumbum's copy
    if exe is None:
        return 127, "", "the docker CLI is not installed"
    try:
        rc, out, err = local[exe][list(args)].run(retcode=None, timeout=timeout, env=_env())
    except ProcessTimedOut:
        return 124, "", f"`docker {' '.join(args)}` did not answer within {timeout:.0f} s"
    return rc, out, err


def buildx_version() -> str | None:
    """buildx's version ("0.13.1"), or None when `docker buildx` does not answer (no plugin)."""
    rc, out, _err = _docker("buildx", "version")
    if rc != 0:
        return None
    m = _VERSION.search(out)
    return m.group(1) if m else out.strip().split()[-1] if out.strip() else "?"


@dataclasses.dataclass(frozen=True)
class Builder:
    """One buildx builder as `docker buildx inspect` shows it (first node)."""

    name: str
    driver: str
    status: str  # "running", "inactive", ... ("" when buildx does not say)
    buildkit_version: str | None


def parse_inspect(text: str) -> Builder:
    """A :class:`Builder` from `docker buildx inspect` output (buildx 0.10–0.19 layouts: "Buildkit:"
    or "BuildKit version:")."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    version = fields.get("buildkit version") or fields.get("buildkit") or None
    return Builder(name=fields.get("name", "?"), driver=fields.get("driver", "?"),
                   status=fields.get("status", ""), buildkit_version=version)


def parse_ls(text: str) -> list[str]:
    """Builder names (with their driver) from `docker buildx ls` text output: "default (docker)"."""
    names = []
    for line in text.splitlines()[1:]:
        if not line.strip() or line.startswith((" ", "\t")) or line.lstrip().startswith("\\_"):
            continue
        cols = line.split()
        name = cols[0].rstrip("*")
        driver = cols[1] if len(cols) > 1 and not cols[1].startswith(("unix:", "tcp:", "ssh:")) else "?"
        names.append(f"{name} ({driver})")
    return names


def builders() -> list[str]:
    """The builders there are, as "name (driver)"; [] when buildx does not answer."""
    rc, out, _err = _docker("buildx", "ls")
    return parse_ls(out) if rc == 0 else []


def inspect(name: str | None) -> Builder | None:
    """The builder ``name`` (None: buildx's current one), or None when there is no such builder."""
    rc, out, _err = _docker("buildx", "inspect", *([name] if name else []))
    return parse_inspect(out) if rc == 0 else None


def choose(requested: str | None = None, *, engine_version: str = "?") -> BuildPath:
    """The build path for this run (see the module docstring).

    ``requested``: the `--builder` option (None: not given). ``engine_version``: the engine's version,
    named in errors. Raises UserInputError (exit 2) when ``requested`` or ``DOCKER_BUILDKIT=1`` asks
    for BuildKit and buildx is missing, when the builder does not exist (the message lists those there
    are), or when ``requested`` conflicts with ``DOCKER_BUILDKIT=0``."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    off = switch in ("0", "false", "no", "off")
    on = switch in ("1", "true", "yes", "on")
    if off:
        if requested:
            raise UserInputError(f"--builder {requested} asks for BuildKit, but {ENV_SWITCH}={os.environ[ENV_SWITCH]} "
                                 f"selects the classic builder: drop one of them")
        return BuildPath("classic", why=f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}")
    version = buildx_version()
    if version is None:
        if requested or on:
            what = f"--builder {requested}" if requested else f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
            raise UserInputError(f"{what} needs BuildKit through the docker buildx plugin, which the docker CLI "
                                 f"here lacks (`docker buildx version` failed; engine {engine_version}): install "
                                 f"docker-buildx (Debian 13, Docker's packages) or drop {what.split('=')[0]} "
                                 f"to use the classic builder")
        return BuildPath("classic", why="no docker buildx plugin")
    found = inspect(requested or None)
    if found is None:
        if requested or os.environ.get("BUILDX_BUILDER"):
            name = requested or os.environ["BUILDX_BUILDER"]
            there = builders()
            raise UserInputError(f"no buildx builder named {name!r}; builders here: "
                                 f"{', '.join(there) if there else 'none'} (create one with `docker buildx create`)")
        if on:
            raise UserInputError(f"{ENV_SWITCH}=1, but buildx has no usable builder "
                                 f"(`docker buildx inspect` failed; engine {engine_version})")
        return BuildPath("classic", why="docker buildx has no usable builder")
    if not requested and not on and found.driver == "docker" and found.status and found.status != "running":
        return BuildPath("classic", why=f"buildx's builder {found.name} is {found.status}")
    return BuildPath("buildkit", builder=found.name, driver=found.driver, buildkit_version=found.buildkit_version,
                     buildx_version=version)


# --- the build -------------------------------------------------------------------------------------


@dataclasses.dataclass
class PlainProgress:
    """State of one `--progress=plain` stream, fed line by line (`feed`)."""

    steps: dict[str, str] = dataclasses.field(default_factory=dict)  # vertex number -> "stage n/m instruction"
    cached: set[str] = dataclasses.field(default_factory=set)
    script_error: str | None = None  # our in-build scripts' "name: error: ..." line
    error: str | None = None  # buildx's final "ERROR: ..." line (or a vertex's ERROR)

    def feed(self, line: str, script_error: re.Pattern) -> tuple[str, int | None, int | None] | None:
        """Take one line; return (progress text, step n, of m) when a build step or the export starts
        (n and m None for the export), else None."""
        v = _VERTEX.match(line)
        if v:
            number, stage, n, m, instruction = v.groups()
            self.steps[number] = f"{stage + ' ' if stage else ''}{n}/{m} {instruction}"
            where = f" [{stage}]" if stage else ""
            return f"step {n}/{m} {instruction}{where}", int(n), int(m)
        x = _EXPORT.match(line)
        if x:
            return x.group(2), None, None
        c = _CACHED.match(line)
        if c:
            self.cached.add(c.group(1))
            return None
        log = _LOG.match(line)
        if log:
            s = script_error.match(log.group(3).strip())
            if s:
                self.script_error = f"{s.group(1)}: {s.group(2).strip()}"
            return None
        e = _VERTEX_ERROR.match(line)
        if e and not self.error:
            self.error = e.group(2).strip()
            return None
        f = _FINAL_ERROR.match(line)
        if f:
            self.error = f.group(1).strip()
        return None


def read_metadata(path: Path) -> tuple[str | None, str | None]:
    """(image ID, config digest) from buildx's --metadata-file; (None, None) when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    return data.get("containerimage.digest"), data.get("containerimage.config.digest")


def command(path: BuildPath, context: Path, *, metadata: Path, iidfile: Path, no_cache: bool,
            build_args: dict[str, str] | None = None) -> list[str]:
    """The `docker buildx build` argv for ``context`` (its Dockerfile, labels already in it)."""
    argv = ["docker", "buildx", "build", "--builder", path.builder or "default", "--progress", "plain", "--load",
            "--provenance=false", "--metadata-file", str(metadata), "--iidfile", str(iidfile)]
    for k, v in sorted((build_args or {}).items()):
        argv += ["--build-arg", f"{k}={v}"]
    if no_cache:
        argv.append("--no-cache")
    return [*argv, str(context)]


def tracker_value(pid: int, digest: str, started: float) -> str:
    """The tracker's record of a buildx process in flight: its PID, the build's inputs digest (the
    label that finds what its exporter wrote) and its start (epoch seconds)."""
    return f"{pid}\t{digest}\t{started:.0f}"


def run(path: BuildPath, ref: str, context: Path, digest: str, log_path: Path, on_step, *, no_cache: bool,
        tracker, tail_lines: int = 25, build_args: dict[str, str] | None = None
        ) -> tuple[str, str | None, str | None, deque, str | None]:
    """Build ``context`` with buildx; the plain log goes to ``log_path`` and each step start to
    ``on_step(text, n, m)``. Returns (exit status text or "", image ID, config digest, the log's last
    lines, our script's error line). The caller turns a failure into its error."""
    # beside the context, in the build's own work directory (removed with it)
    metadata = context.parent / f"{context.name}.buildx-metadata.json"
    iidfile = context.parent / f"{context.name}.iid"
    for f in (metadata, iidfile):
        f.unlink(missing_ok=True)
    argv = command(path, context, metadata=metadata, iidfile=iidfile, no_cache=no_cache, build_args=build_args)
    state = PlainProgress()
    tail: deque[str] = deque(maxlen=tail_lines)
    started = time.time()
    with open(log_path, "w", encoding="utf-8", errors="replace", buffering=1) as logf:  # line by line: tail -f
        logf.write(f"# imagegen build {ref} inputs {digest} with {path.describe()}\n# {' '.join(argv)}\n")
        logf.flush()
        # its own session: Ctrl-C reaches imagegen, whose handler cancels buildx (cancel_builds)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True, text=True, encoding="utf-8", errors="replace")
        value = tracker_value(proc.pid, digest, started)
        tracker.add("buildx", value)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = ANSI.sub("", raw.rstrip("\n"))
                logf.write(line + "\n")
                if line.strip():
                    tail.append(line)
                step = state.feed(line, SCRIPT_ERROR)
                if step:
                    on_step(*step)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # an exception in this thread: do not leave buildx running
                cancel(proc.pid)
            tracker.discard("buildx", value)
    image_id, config_digest = read_metadata(metadata)
    if not image_id:
        try:
            image_id = iidfile.read_text().strip() or None
        except OSError:
            image_id = None
    for f in (metadata, iidfile):
        f.unlink(missing_ok=True)
    failure = "" if rc == 0 else (state.error or f"docker buildx build exited {rc}")
    return failure, image_id if rc == 0 else None, config_digest, tail, state.script_error


def cancel(pid: int, *, wait: float = 30.0) -> None:
    """Stop a buildx process (SIGINT to its process group: buildx cancels the solve on the builder),
    wait up to ``wait`` seconds, then SIGKILL. Reaps it when it is our child."""
    try:
        os.killpg(pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child (or already reaped): poll its existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def cancel_builds(values: list[str], *, settle: float = 3.0) -> list[str]:
    """After an interrupt: cancel the buildx processes in flight (``tracker_value`` records), then
    return the IDs of the images their exporters wrote anyway: untagged, labelled with the build's
    inputs digest, created since it started (polled ``settle`` seconds, as the engine may finish an
    export its client no longer waits for). Best effort."""
    from . import engine
    from .labels import LABEL_DIGEST

    records = []
    for value in values:
        pid, digest, started = value.split("\t")
        cancel(int(pid))
        records.append((digest, float(started)))
    found: list[str] = []
    deadline = time.monotonic() + settle
    while records:
        try:
            for digest, started in records:
                for img in engine.api().images(all=True, filters={"label": f"{LABEL_DIGEST}={digest}"}):
                    tags = [t for t in (img.get("RepoTags") or []) if t != "<none>:<none>"]
                    if not tags and img.get("Created", 0) >= started - 1 and img["Id"] not in found:
                        found.append(img["Id"])
        except Exception:  # noqa: BLE001 - an engine error or a dead connection while exiting: nothing more to find
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return found
