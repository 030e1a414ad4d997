"""`imagegen publish`: push tested cells with their aliases, and verify what the registry holds.

Per cell, in this order (nothing reaches the engine before step 1 passed for every cell):
1. validate the registry, namespace, image name, immutable tag and every alias with the matrix's rules
   (`UserInputError`, exit 2): Docker references are lowercase;
2. the local image must be built by imagegen and its config digest (`engine.config_digest`: the image ID
   on the graph-driver image store; on the containerd store, whose image ID is the manifest digest, from
   the engine's save stream or the index kept under the cache root) must have a passing test record
   (`testrecord`), unless `force` (then a warning on stderr);
3. if the registry already holds the immutable tag: the same image (its manifest's config digest is the
   local image's config digest: `same_image`, on every store) is not pushed again; another image is
   refused unless `force`;
4. the engine pushes the immutable tag (Docker SDK, streamed progress on stderr), retried with the
   `RetryPolicy` on transient errors (the engine retries layers, not manifests);
5. the manifest is read back through the registry's HTTP API (`registry.Registry`); its digest must equal
   the one the engine reported (the containerd image store reports none), and its config digest must be
   the local image's (`same_image`);
6. only then each alias gets a PUT of those exact manifest bytes (same digest, no layer upload);
7. `reports/publish.json` (schema `imagegen.publish/1`) lists what was verified in the registry:
   `ref`, `digest` (the registry's manifest digest), `aliases`, `compressed_size` (bytes: config + layers
   as stored), `image_id` (the engine's), `config_digest` (the registry manifest's, verified equal to
   `local_config_digest`, the local image's), `cell`, `pushed` (false when step 3 found it already
   there), `tested`.

Credentials: `REGISTRY_USER` + `REGISTRY_TOKEN`, else docker's config (`~/.docker/config.json`,
credential helpers included, read by docker-py). They go to the engine and into request headers only;
no message, log line or report of ours contains them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import docker.errors

from . import engine, testrecord
from .labels import LABEL_DIGEST
from .console import err, log, warn
from .errors import ImagegenError, UserInputError
from .matrix import REGISTRY_RE, REPO_COMPONENT_RE, TAG_RE, Cell
from .registry import Manifest, Registry, RetryPolicy, classify_engine_error, one_line

SCHEMA = "imagegen.publish/1"


@dataclass
class Published:
    cell: str
    ref: str  # registry/namespace/image:tag
    digest: str | None
    aliases: list[str] = field(default_factory=list)  # full references, same digest
    compressed_size: int | None = None
    image_id: str = ""
    config_digest: str | None = None  # the registry manifest's config digest, verified against the local image
    local_config_digest: str = ""  # the local image's config digest (engine.config_digest), also in a dry run
    pushed: bool = False  # this run pushed the immutable tag (False: already there, or dry run)
    tested: bool = True
    dry_run: bool = False


@dataclass(frozen=True)
class Target:
    cell: Cell
    registry: str
    repo: str  # namespace/image (path in the registry)
    tag: str
    aliases: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.registry}/{self.repo}:{self.tag}"


# --- step 1: inputs -----------------------------------------------------------------------------


def plan(cells: list[Cell], *, registry: str | None = None, namespace: str | None = None,
         extra_aliases: list[str] | None = None) -> list[Target]:
    """Validate every reference before anything else happens. Raises UserInputError (one line)."""
    targets = []
    for cell in cells:
        reg = registry if registry is not None else cell.registry
        ns = namespace if namespace is not None else cell.namespace
        if not reg:
            raise UserInputError("no registry: set `registry:` in matrix.yaml or pass --registry")
        if not REGISTRY_RE.match(reg):
            raise UserInputError(f"--registry '{reg}' is not a valid registry host[:port]")
        for part in (ns.split("/") if ns else []):
            if not REPO_COMPONENT_RE.match(part):
                why = " (Docker references must be lowercase)" if part.lower() != part else ""
                raise UserInputError(f"--namespace '{ns}' is not a valid image namespace{why}: lowercase letters, "
                                     "digits and . _ - separators")
        if not REPO_COMPONENT_RE.match(cell.image):
            raise UserInputError(f"'{cell.image}' is not a valid image name")
        aliases = tuple(dict.fromkeys([*cell.aliases, *(extra_aliases or [])]))
        for t in (cell.tag, *aliases):
            if not TAG_RE.match(t):
                raise UserInputError(f"'{t}' is not a valid Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
        if cell.tag in aliases:
            raise UserInputError(f"alias '{cell.tag}' is {cell.ref}'s own immutable tag")
        repo = "/".join(p for p in (ns, cell.image) if p)
        if len(f"{reg}/{repo}") > 255:
            raise UserInputError(f"'{reg}/{repo}' is longer than 255 characters")
        targets.append(Target(cell, reg, repo, cell.tag, aliases))
    return targets


def credentials(registry: str) -> tuple[str, str] | None:
    """`(user, secret)` from REGISTRY_USER/REGISTRY_TOKEN, else docker's config for `registry`; or None."""
    user, token = os.environ.get("REGISTRY_USER"), os.environ.get("REGISTRY_TOKEN")
    if user and token:
        return user, token
    try:
        from docker import auth as docker_auth

        cfg = docker_auth.load_config()
        found = docker_auth.resolve_authconfig(cfg, registry) or {}
    except Exception:  # noqa: BLE001 - an unreadable config or helper means "no credentials"
        return None
    found = {k.lower(): v for k, v in found.items()}
    if found.get("identitytoken"):
        return "<token>", found["identitytoken"]
    if found.get("username") and found.get("password"):
        return found["username"], found["password"]
    return None


# --- steps 2-6 ----------------------------------------------------------------------------------


def _local_image(cell: Cell) -> dict:
    try:
        info = engine.api().inspect_image(cell.local_ref)
    except docker.errors.ImageNotFound:
        raise UserInputError(f"{cell.ref} is not built here; run `imagegen build --variant {cell.ref}` first") from None
    if LABEL_DIGEST not in ((info.get("Config") or {}).get("Labels") or {}):
        raise UserInputError(f"{cell.ref} was not built by imagegen (no {LABEL_DIGEST} label); refusing to push it")
    return info


def check_tested(cell: Cell, image_id: str, *, force: bool, config_digest: str | None = None) -> bool:
    """True if the image `image_id` (whose config digest is `config_digest`, asked of the engine when not
    given) has a passing test record; without one: refuse, or warn with `force`."""
    if testrecord.find_by_config(config_digest) if config_digest else testrecord.find(image_id):
        return True
    if not force:
        raise ImagegenError(f"{cell.ref} ({image_id[:19]}) has no passing test record: run `imagegen test "
                            f"--variant {cell.ref}` (or `imagegen build`) first, or publish with --force")
    warn(f"--force: publishing {cell.ref} ({image_id[:19]}), which has no passing test record")
    return False


class _PushProgress:
    """Per-layer bytes from the engine's push stream, as one line on stderr (a live bar on a terminal)."""

    def __init__(self, ref: str):
        self.ref = ref
        self.layers: dict[str, tuple[int, int]] = {}
        self.done: set[str] = set()
        self._prog = None

    def __enter__(self):
        if err.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._prog = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err,
                                  transient=True)
            self._prog.start()
            self._task = self._prog.add_task(f"push {self.ref}", total=None)
        return self

    def feed(self, chunk: dict) -> None:
        lid, status = chunk.get("id"), chunk.get("status", "")
        detail = chunk.get("progressDetail") or {}
        if lid and detail.get("total"):
            self.layers[lid] = (detail.get("current", 0), detail["total"])
        if lid and status in ("Pushed", "Layer already exists", "Mounted from"):
            self.done.add(lid)
            if self._prog is None:
                log(f"  {lid}: {status.lower()}")
        if self._prog is not None:
            cur = sum(c for c, _ in self.layers.values())
            tot = sum(t for _, t in self.layers.values()) or None
            self._prog.update(self._task, completed=cur, total=tot)

    def __exit__(self, *exc):
        if self._prog is not None:
            self._prog.stop()


def engine_push(repo_ref: str, tag: str, *, auth: tuple[str, str] | None, retry: RetryPolicy,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> str | None:
    """Push `repo_ref:tag` through the engine; returns the manifest digest it reports, or None when a
    successful push reports none (the containerd image store: Docker 26 measured here; the caller reads
    the digest back from the registry). A failure is classified by `registry.classify_engine_error`
    (the registry's error code in the stream's `errorDetail`/`error`, an HTTP status, else retried) and
    retried within `retry`'s bound; the engine does not pass `Retry-After` on, so a 429 waits at least
    `retry.throttle_floor`. Raises ImagegenError (one line) when the push fails for good."""
    api = engine.api()
    auth_config = {"username": auth[0], "password": auth[1]} if auth else None
    retries = retry.start(clock)
    while True:
        digest, failure = None, None
        try:
            with _PushProgress(f"{repo_ref}:{tag}") as progress:
                for chunk in api.push(repo_ref, tag=tag, stream=True, decode=True, auth_config=auth_config):
                    if "error" in chunk or "errorDetail" in chunk:
                        detail = chunk.get("errorDetail") if isinstance(chunk.get("errorDetail"), dict) else None
                        failure = classify_engine_error(str(chunk.get("error") or ""), detail)
                        break
                    progress.feed(chunk)
                    aux = chunk.get("aux") or {}
                    if "Digest" in aux:
                        digest = aux["Digest"]
        except docker.errors.APIError as exc:
            failure = classify_engine_error(str(exc.explanation or exc), api_status=exc.status_code)
        except Exception as exc:  # noqa: BLE001 - the engine connection dropped mid-stream
            failure = classify_engine_error(f"{type(exc).__name__}: {one_line(str(exc))}")
        if failure is None:
            return digest
        error = failure.reason
        delay = retries.next_delay(failure)
        if delay is None:
            tries = f" {retries.summary()}" if retries.tries > 1 or retries.stop == "time" else ""
            raise ImagegenError(f"push of {repo_ref}:{tag} failed{tries}: {error}")
        warn(f"push of {repo_ref}:{tag} failed ({error}); retrying in {delay:g}s")
        sleep(delay)


def same_image(manifest: Manifest, config_digest: str) -> bool:
    """Whether a registry manifest is the local image whose config digest (`engine.config_digest`) is
    `config_digest`. The config digest names an image on every engine and in every registry; the
    manifest digest does not (the graph-driver store writes a new manifest when it pushes), and the
    engine's image ID is the config digest only on the graph-driver store."""
    return manifest.config_digest is not None and manifest.config_digest == config_digest


def publish_target(t: Target, *, force: bool = False, retry: RetryPolicy = RetryPolicy(),
                   sleep: Callable[[float], None] = time.sleep) -> Published:
    """Steps 2-6 for one validated target; returns only what the registry was seen to hold."""
    info = _local_image(t.cell)
    image_id = info["Id"]
    local_config = engine.config_digest(image_id)
    tested = check_tested(t.cell, image_id, force=force, config_digest=local_config)
    auth = credentials(t.registry)
    reg = Registry(t.registry, auth=auth, retry=retry, sleep=sleep, on_retry=lambda m: warn(m))
    existing = reg.get_manifest(t.repo, t.tag)
    pushed = False
    if existing is not None and same_image(existing, local_config):
        log(f"{t.ref} already holds this image ({existing.digest}); not pushed again")
        manifest = existing
    else:
        if existing is not None:
            if not force:
                raise ImagegenError(f"{t.ref} already exists in the registry with another image ({existing.digest}); "
                                    "immutable tags are not overwritten (use --force to replace it)")
            warn(f"--force: replacing {t.ref} (was {existing.digest})")
        repo_ref = f"{t.registry}/{t.repo}"
        api = engine.api()
        api.tag(image_id, repo_ref, t.tag, force=True)
        try:
            log(f"pushing {t.ref}")
            pushed_digest = engine_push(repo_ref, t.tag, auth=auth, retry=retry, sleep=sleep)
        finally:
            try:  # untag our temporary remote-named reference; the image itself stays
                api.remove_image(f"{repo_ref}:{t.tag}", noprune=True)
            except docker.errors.APIError:
                pass
        manifest = reg.get_manifest(t.repo, t.tag)
        if manifest is None:
            raise ImagegenError(f"{t.ref}: the engine reported {pushed_digest or 'a push'} but the registry has no "
                                "such tag")
        if pushed_digest and manifest.digest != pushed_digest:
            raise ImagegenError(f"{t.ref}: the registry holds {manifest.digest}, the engine pushed {pushed_digest}; "
                                "aliases not moved")
        if not same_image(manifest, local_config):
            raise ImagegenError(f"{t.ref}: the registry holds {manifest.digest} (config {manifest.config_digest}), "
                                f"which is not the local image {image_id} (config {local_config}); aliases not moved")
        pushed = True
    aliases = []
    for alias in t.aliases:
        reg.put_manifest(t.repo, alias, manifest)
        aliases.append(f"{t.registry}/{t.repo}:{alias}")
        log(f"  alias {aliases[-1]} -> {manifest.digest}")
    return Published(cell=t.cell.ref, ref=t.ref, digest=manifest.digest, aliases=aliases,
                     compressed_size=manifest.compressed_size, image_id=image_id,
                     config_digest=manifest.config_digest, local_config_digest=local_config, pushed=pushed,
                     tested=tested)


def publish(targets: list[Target], *, force: bool = False, dry_run: bool = False,
            retry: RetryPolicy = RetryPolicy(), report: Path | None = Path("reports/publish.json"),
            sleep: Callable[[float], None] = time.sleep) -> list[Published]:
    """Publish every target in order; stop at the first failure. The report (if any) is written with
    what was verified so far, also when a later cell fails, then the error is raised."""
    done: list[Published] = []
    try:
        for t in targets:
            if dry_run:
                info = _local_image(t.cell)
                local_config = engine.config_digest(info["Id"])
                tested = check_tested(t.cell, info["Id"], force=force, config_digest=local_config)
                done.append(Published(cell=t.cell.ref, ref=t.ref, digest=None,
                                      aliases=[f"{t.registry}/{t.repo}:{a}" for a in t.aliases],
                                      image_id=info["Id"], local_config_digest=local_config, tested=tested,
                                      dry_run=True))
                continue
            done.append(publish_target(t, force=force, retry=retry, sleep=sleep))
    finally:
        if report is not None and not dry_run and done:
            write_report(report, done)
    return done


def write_report(path: Path, items: list[Published]) -> None:
    """`reports/publish.json`: the input for release notes. Atomic; never contains credentials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA, "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "images": [{k: v for k, v in asdict(p).items() if k != "dry_run"} for p in items]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".publish-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
