"""`imagegen publish`: push tested cells with their aliases, and verify what the registry holds.

Per cell, in this order (nothing reaches the engine before step 1 passed for every cell):
1. validate the registry, namespace, image name, immutable tag and every alias with the matrix's rules
   (`UserInputError`, exit 2): Docker references are lowercase;
2. the local image must be built by imagegen and its config digest (`engine.config_digest`: the image ID
   on the graph-driver image store; on the containerd store, whose image ID is the manifest digest, from
   the engine's save stream or the index kept under the cache root) must have a passing test record
   (`testrecord`), unless `skip_test_check` (`--skip-test-check`: a warning on stderr; it never implies
   `replace`);
3. if the registry already holds the immutable tag: the same image (its manifest's config digest is the
   local image's config digest: `same_image`, on every store) is not pushed again; another image is a
   conflict, refused unless `replace` (`--replace`);
4. the engine pushes the immutable tag (Docker SDK, streamed progress on stderr), retried with the
   `RetryPolicy` on transient errors (the engine retries layers, not manifests);
5. the manifest is read back through the registry's HTTP API (`registry.Registry`); its digest must equal
   the one the engine reported (the containerd image store reports none), and its config digest must be
   the local image's (`same_image`);
6. only then each alias: its current target is read from the registry (manifest; for an index, the
   child for linux/amd64; then its config's labels: `io.imagegen.framework.version`, else the leading
   version of `org.opencontainers.image.version`); an alias already on this manifest is left
   (`unchanged`); one on a newer version (`packaging.version`) is kept (`skipped`, with the reason) unless
   `allow_alias_downgrade`; otherwise it gets a PUT of those exact manifest bytes (`moved`: same digest,
   no layer upload). The first alias that fails stops the run (the rest: `skipped`);
7. `reports/publish.json` (schema `imagegen.publish/2`, `write_report`) is written at the end of EVERY
   run that got past step 1: success, failure, refusal, conflict, an unexpected exception or Ctrl-C
   (`exit_code` 130; SIGTERM: 143); see `write_report` for its shape. A dry run writes none.

Credentials: `REGISTRY_USER` + `REGISTRY_TOKEN`, else docker's config (`~/.docker/config.json`,
credential helpers included, read by docker-py). They go to the engine and into request headers only;
no message, log line or report of ours contains them.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import docker.errors
from packaging.version import InvalidVersion, Version

from . import engine, paths, testrecord
from .console import err, log, warn
from .errors import ImagegenError, UserInputError
from .labels import FRAMEWORK_VERSION, LABEL_DIGEST, OCI_VERSION
from .matrix import REGISTRY_RE, REPO_COMPONENT_RE, TAG_RE, Cell
from .registry import Manifest, Registry, RetryPolicy, classify_engine_error, one_line
from .signals import Terminated, interrupt_exit_code

SCHEMA = "imagegen.publish/2"

#: a cell's `status` in the report: `pushed` (this run pushed and verified it), `exists` (the registry
#: already held this image under the tag), `conflict` (the tag holds another image, no `replace`),
#: `refused` (not built here, not built by imagegen, or no passing test record), `failed` (anything else,
#: Ctrl-C included), `not_run` (an earlier cell stopped the run); `dry_run` only in a dry run's result.
CELL_STATUSES = ("pushed", "exists", "conflict", "refused", "failed", "not_run", "dry_run")
#: an alias's `action`: `moved` (PUT to this run's manifest), `unchanged` (already on it), `skipped`
#: (kept where it is: `reason` says why), `failed` (`reason` is the error).
ALIAS_ACTIONS = ("moved", "unchanged", "skipped", "failed")


@dataclass
class AliasResult:
    """One alias of a cell: `digest` is the manifest this run points it at, `previous` the one it held
    before (None: no such tag), `version`/`previous_version` the image versions compared."""

    tag: str
    ref: str  # registry/namespace/image:alias
    action: str = "skipped"
    digest: str | None = None
    previous: str | None = None
    version: str | None = None
    previous_version: str | None = None
    reason: str = ""


@dataclass
class Published:
    """One cell's outcome (see `CELL_STATUSES`); `digest`, `config_digest`, `media_type` are what the
    registry was seen to hold under `tag` (read back), `verified` whether that is the local image."""

    cell: str
    ref: str  # registry/namespace/image:tag
    digest: str | None
    aliases: list[AliasResult] = field(default_factory=list)
    compressed_size: int | None = None
    image_id: str = ""
    config_digest: str | None = None  # the registry manifest's config digest, verified against the local image
    local_config_digest: str = ""  # the local image's config digest (engine.config_digest), also in a dry run
    pushed: bool = False  # this run pushed the immutable tag (False: already there, or dry run)
    tested: bool = True
    dry_run: bool = False
    tag: str = ""
    status: str = "failed"
    verified: bool = False
    media_type: str | None = None
    attempts: int = 0  # engine push tries (0: nothing pushed)
    error: str | None = None  # the last error seen (a retried one too), one line
    previous: str | None = None  # what the immutable tag held before, when it held another image
    image_digest: str | None = None  # when the tag holds an index: its linux/amd64 child's manifest digest
    attestations: list[dict] = field(default_factory=list)  # attest.Attached as dicts: kind, digest, where, tags
    signature: str | None = None  # the `sha256-<hex>.sig` manifest's digest, when signed (--sign-key)


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


def check_tested(cell: Cell, image_id: str, *, skip_test_check: bool, config_digest: str | None = None) -> bool:
    """True if the image `image_id` (whose config digest is `config_digest`, asked of the engine when not
    given) has a passing test record; without one: raise ImagegenError (one line), or with
    `skip_test_check` warn on stderr and return False."""
    if testrecord.find_by_config(config_digest) if config_digest else testrecord.find(image_id):
        return True
    if not skip_test_check:
        raise ImagegenError(f"{cell.ref} ({image_id[:19]}) has no passing test record: run `imagegen test "
                            f"--variant {cell.ref}` (or `imagegen build`) first, or publish with --skip-test-check")
    warn(f"--skip-test-check: publishing {cell.ref} ({image_id[:19]}), which has no passing test record")
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


@dataclass
class Tries:
    """What `engine_push` tried: `count` tries, `last_error` the last failure seen (one line)."""

    count: int = 0
    last_error: str | None = None


def engine_push(repo_ref: str, tag: str, *, auth: tuple[str, str] | None, retry: RetryPolicy,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic, tries: Tries | None = None) -> str | None:
    """Push `repo_ref:tag` through the engine; returns the manifest digest it reports, or None when a
    successful push reports none (the containerd image store: Docker 26 measured here; the caller reads
    the digest back from the registry). A failure is classified by `registry.classify_engine_error`
    (the registry's error code in the stream's `errorDetail`/`error`, an HTTP status, else retried) and
    retried within `retry`'s bound; the engine does not pass `Retry-After` on, so a 429 waits at least
    `retry.throttle_floor`. `tries`, when given, counts the tries and keeps the last error. Raises
    ImagegenError (one line) when the push fails for good."""
    api = engine.api()
    tries = tries if tries is not None else Tries()
    auth_config = {"username": auth[0], "password": auth[1]} if auth else None
    retries = retry.start(clock)
    while True:
        digest, failure = None, None
        tries.count += 1
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
        tries.last_error = error
        delay = retries.next_delay(failure)
        if delay is None:
            summary = f" {retries.summary()}" if retries.tries > 1 or retries.stop == "time" else ""
            raise ImagegenError(f"push of {repo_ref}:{tag} failed{summary}: {error}")
        warn(f"push of {repo_ref}:{tag} failed ({error}); retrying in {delay:g}s")
        sleep(delay)


def same_image(manifest: Manifest, config_digest: str) -> bool:
    """Whether a registry manifest is the local image whose config digest (`engine.config_digest`) is
    `config_digest`. The config digest names an image on every engine and in every registry; the
    manifest digest does not (the graph-driver store writes a new manifest when it pushes), and the
    engine's image ID is the config digest only on the graph-driver store."""
    return manifest.config_digest is not None and manifest.config_digest == config_digest


def _version_of(labels: dict | None) -> str | None:
    """An image's version from its labels: `io.imagegen.framework.version`, else the leading version of
    `org.opencontainers.image.version` (imagegen writes the tag there, e.g. `3.3.1-cpu-slim`); None."""
    labels = labels or {}
    if labels.get(FRAMEWORK_VERSION):
        return str(labels[FRAMEWORK_VERSION])
    m = re.match(r"v?(\d+(?:\.\d+)*)", str(labels.get(OCI_VERSION) or ""))
    return m.group(1) if m else None


def _older(new: str | None, old: str | None) -> bool:
    """`new` is an older version than `old` (`packaging.version`); False when either is unknown or not a
    version (then nothing can be said)."""
    try:
        return new is not None and old is not None and Version(new) < Version(old)
    except InvalidVersion:
        return False


def registry_version(reg: Registry, repo: str, manifest: Manifest) -> str | None:
    """The version of the image `manifest` (a tag's manifest in `repo`) stands for, from its config's
    labels (`_version_of`); an index is resolved to its linux/amd64 child (`Registry.image_for`). None when
    it has no config or no version label. Raises RegistryError when the registry fails to answer."""
    image = reg.image_for(repo, manifest)
    if image is None or not image.config_digest:
        return None
    try:
        config = json.loads(reg.get_blob(repo, image.config_digest))
    except ValueError:
        return None
    return _version_of((config.get("config") or {}).get("Labels") if isinstance(config, dict) else None)


def move_aliases(reg: Registry, t: Target, manifest: Manifest, version: str | None, rec: Published, *,
                 allow_alias_downgrade: bool = False) -> None:
    """Step 6: each alias of `t`, in order, appended to `rec.aliases` as it is decided (an `AliasResult`).
    Raises the first failure (RegistryError) after marking that alias `failed` and the rest `skipped`."""
    for i, alias in enumerate(t.aliases):
        a = AliasResult(tag=alias, ref=f"{t.registry}/{t.repo}:{alias}", digest=manifest.digest, version=version)
        rec.aliases.append(a)
        try:
            current = reg.get_manifest(t.repo, alias)
            if current is not None:
                a.previous = current.digest
                if current.digest == manifest.digest:
                    a.action, a.previous_version = "unchanged", version
                    log(f"  alias {a.ref} already -> {manifest.digest}")
                    continue
                a.previous_version = registry_version(reg, t.repo, current)
                if _older(version, a.previous_version):
                    if not allow_alias_downgrade:
                        a.action = "skipped"
                        a.reason = (f"holds {a.previous_version} ({current.digest[:19]}), newer than {version}: "
                                    "kept (--allow-alias-downgrade moves it back)")
                        warn(f"alias {a.ref} {a.reason}")
                        continue
                    a.reason = f"moved back from {a.previous_version} (--allow-alias-downgrade)"
                elif a.previous_version is None:
                    a.reason = "its current target names no version"
            reg.put_manifest(t.repo, alias, manifest)
            a.action = "moved"
            log(f"  alias {a.ref} -> {manifest.digest}" + (f" ({a.reason})" if a.reason else ""))
        except BaseException as exc:
            a.action = "failed"
            a.reason = one_line(str(exc)) or type(exc).__name__
            for rest in t.aliases[i + 1:]:
                rec.aliases.append(AliasResult(tag=rest, ref=f"{t.registry}/{t.repo}:{rest}", digest=manifest.digest,
                                               version=version, reason=f"not tried: alias {alias} failed"))
            raise


def _record(t: Target) -> Published:
    return Published(cell=t.cell.ref, ref=t.ref, tag=t.tag, digest=None, status="not_run", tested=False)


def publish_target(t: Target, *, skip_test_check: bool = False, replace: bool = False,
                   allow_alias_downgrade: bool = False, retry: RetryPolicy = RetryPolicy(),
                   sleep: Callable[[float], None] = time.sleep, record: Published | None = None,
                   evidence: tuple[str, ...] = ("sbom", "provenance"), sign_key=None) -> Published:
    """Steps 2-6 for one validated target. Fills `record` (a new one when None) as it goes, so that on
    failure it holds what was seen so far with `status` `refused` (UserInputError when the image is not
    built here or not by imagegen, ImagegenError when untested), `conflict` (ImagegenError) or `failed`
    (the error raised); returns it with `status` `pushed` or `exists`."""
    rec = record if record is not None else _record(t)
    rec.status = "refused"
    info = _local_image(t.cell)
    image_id = info["Id"]
    rec.image_id = image_id
    labels = (info.get("Config") or {}).get("Labels") or {}
    version = _version_of(labels) or t.cell.version
    rec.status = "failed"
    local_config = engine.config_digest(image_id)
    rec.local_config_digest = local_config
    rec.status = "refused"
    rec.tested = check_tested(t.cell, image_id, skip_test_check=skip_test_check, config_digest=local_config)
    rec.status = "failed"
    auth = credentials(t.registry)
    def retried(message: str) -> None:  # a registry request retried: said, and kept as the last error seen
        warn(message)
        rec.error = message

    reg = Registry(t.registry, auth=auth, retry=retry, sleep=sleep, on_retry=retried)
    existing = reg.get_manifest(t.repo, t.tag)
    # an index or a manifest list stands for its linux/amd64 child (attestations skipped)
    existing_image = reg.image_for(t.repo, existing) if existing is not None else None
    if existing_image is not None and same_image(existing_image, local_config):
        held = f"{existing.digest}, an index whose linux/amd64 image is {existing_image.digest}" \
            if existing.is_index else existing.digest
        log(f"{t.ref} already holds this image ({held}); not pushed again")
        manifest = existing
        rec.status = "exists"
    else:
        if existing is not None:
            rec.previous = existing.digest
            if not replace:
                rec.status = "conflict"
                remote_config = existing_image.config_digest if existing_image is not None else None
                rec.digest, rec.media_type, rec.config_digest = existing.digest, existing.media_type, remote_config
                raise ImagegenError(f"{t.ref} already exists in the registry with another image (config "
                                    f"{remote_config or 'none for linux/amd64'}, the local one's {local_config}); "
                                    "immutable tags are not overwritten (--replace replaces it)")
            warn(f"--replace: replacing {t.ref} (was {existing.digest})")
        manifest = _push_and_check(reg, t, image_id, local_config, auth=auth, retry=retry, sleep=sleep, rec=rec)
        rec.status = "pushed"
    image = existing_image if manifest is existing else manifest
    rec.digest, rec.media_type, rec.config_digest = manifest.digest, manifest.media_type, image.config_digest
    if manifest.is_index:
        rec.image_digest = image.digest
    rec.compressed_size = image.compressed_size
    rec.verified = True
    done_status = rec.status
    rec.status = "failed"  # until the evidence is attached and every alias is decided
    if evidence:
        attach_evidence(reg, t, image, labels, image_id, local_config, evidence, rec)
    if sign_key is not None:
        from . import signing

        rec.signature = signing.sign(reg, t.repo, image, sign_key)
        log(f"{t.ref}: signed ({image.digest[:19]}…; signatures in tag {signing.fallback_tag(image.digest, 'sig')})")
    move_aliases(reg, t, manifest, version, rec, allow_alias_downgrade=allow_alias_downgrade)
    rec.status = done_status
    return rec


def _push_and_check(reg: Registry, t: Target, image_id: str, local_config: str, *, auth, retry: RetryPolicy,
                    sleep: Callable[[float], None], rec: Published) -> Manifest:
    """Push `image_id` as t.ref through the engine, then read the registry back: the manifest it now holds
    for the tag, checked to be the engine's digest and the local image's config. Fills `rec` (attempts,
    last error, pushed, digests). ImagegenError when the registry holds something else."""
    repo_ref = f"{t.registry}/{t.repo}"
    api = engine.api()
    api.tag(image_id, repo_ref, t.tag, force=True)
    tries = Tries()
    try:
        log(f"pushing {t.ref}")
        pushed_digest = engine_push(repo_ref, t.tag, auth=auth, retry=retry, sleep=sleep, tries=tries)
    finally:
        rec.attempts, rec.error = tries.count, tries.last_error or rec.error
        try:  # untag our temporary remote-named reference; the image itself stays
            api.remove_image(f"{repo_ref}:{t.tag}", noprune=True)
        except docker.errors.APIError:
            pass
    rec.pushed = True  # the engine says so; what the registry holds is checked next
    manifest = reg.get_manifest(t.repo, t.tag)
    if manifest is None:
        raise ImagegenError(f"{t.ref}: the engine reported {pushed_digest or 'a push'} but the registry has no "
                            "such tag")
    rec.digest, rec.media_type, rec.config_digest = manifest.digest, manifest.media_type, manifest.config_digest
    if pushed_digest and manifest.digest != pushed_digest:
        raise ImagegenError(f"{t.ref}: the registry holds {manifest.digest}, the engine pushed {pushed_digest}; "
                            "aliases not moved")
    if not same_image(manifest, local_config):
        raise ImagegenError(f"{t.ref}: the registry holds {manifest.digest} (config {manifest.config_digest}), "
                            f"which is not the local image {image_id} (config {local_config}); aliases not moved")
    return manifest


def attach_evidence(reg: Registry, t: Target, image: Manifest, labels: dict[str, str], image_id: str,
                    config_digest: str, kinds: tuple[str, ...], rec: Published) -> None:
    """Attach the SBOM (sbom.for_image) and the SLSA provenance (provenance.statement, from the build
    record when this machine built the image) to the pushed image manifest `image` (attest.attach:
    referrers where the registry lists them, else the fallback tags). Fills `rec.attestations`."""
    from . import attest, provenance
    from . import sbom as sbom_mod
    from .labels import OCI_CREATED

    for kind in kinds:
        if kind == "sbom":
            log(f"{t.ref}: SBOM (trivy, installed only, with the audit's vendored libraries and CUDA kernels)")
            payload = sbom_mod.for_image(image_id, config_digest=config_digest, created=labels.get(OCI_CREATED))
        elif kind == "provenance":
            statement = provenance.statement(f"{t.registry}/{t.repo}", image.digest, labels,
                                             provenance.read_record(config_digest))
            payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
        else:
            raise UserInputError(f"unknown evidence kind {kind!r} (sbom, provenance)")
        a = attest.attach(reg, t.repo, image, kind, payload)
        rec.attestations.append(asdict(a))
        log(f"{t.ref}: {kind} attached as {a.digest[:19]}… ({'referrers API' if a.where == 'referrers' else 'tag ' + a.tags[0]})")


def exit_code_of(exc: BaseException | None) -> int:
    """The CLI's exit code for a run that ended with `exc` (None: 0; Ctrl-C: 130; SIGTERM: 143, see
    signals; ImagegenError: its `exit_code`; anything else: 1)."""
    if exc is None:
        return 0
    if isinstance(exc, KeyboardInterrupt):
        return interrupt_exit_code(exc)
    return exc.exit_code if isinstance(exc, ImagegenError) else 1


def publish(targets: list[Target], *, skip_test_check: bool = False, replace: bool = False,
            allow_alias_downgrade: bool = False, dry_run: bool = False, evidence: tuple[str, ...] = ("sbom", "provenance"),
            sign_key=None,
            retry: RetryPolicy = RetryPolicy(), report: Path | None = Path("reports/publish.json"),
            sleep: Callable[[float], None] = time.sleep) -> list[Published]:
    """Publish every target in order; stop at the first failure (the later cells: `not_run`). Unless
    `dry_run`, the report (if any) is written at the end whatever happened, with every cell's record and
    the run's exit code (`exit_code_of`); then the error, if any, is raised again (KeyboardInterrupt
    included). Returns one `Published` per target."""
    # every cell must be an image imagegen built here before anything is read or written: a cell that is
    # not is the user's mistake (exit 2, nothing touched, no report), not a failure half-way through
    problems = []
    for t in targets:
        try:
            _local_image(t.cell)
        except UserInputError as exc:
            problems.append(str(exc))
    if problems:
        raise UserInputError(problems[0] if len(problems) == 1 else
                             f"{len(problems)} cells cannot be published: " + "; ".join(problems))
    records = [_record(t) for t in targets]
    failure: BaseException | None = None
    try:
        for t, rec in zip(targets, records, strict=True):
            if dry_run:
                info = _local_image(t.cell)
                local_config = engine.config_digest(info["Id"])
                tested = check_tested(t.cell, info["Id"], skip_test_check=skip_test_check, config_digest=local_config)
                rec.status, rec.dry_run, rec.image_id = "dry_run", True, info["Id"]
                rec.local_config_digest, rec.tested = local_config, tested
                rec.aliases = [AliasResult(tag=a, ref=f"{t.registry}/{t.repo}:{a}", reason="dry run")
                               for a in t.aliases]
                continue
            try:
                publish_target(t, skip_test_check=skip_test_check, replace=replace,
                               allow_alias_downgrade=allow_alias_downgrade, retry=retry, sleep=sleep, record=rec,
                               evidence=evidence, sign_key=sign_key)
            except BaseException as exc:
                if rec.status not in ("refused", "conflict"):
                    rec.status = "failed"
                rec.error = (one_line(str(exc)) or type(exc).__name__) if not isinstance(exc, KeyboardInterrupt) \
                    else ("terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted")
                raise
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if report is not None and not dry_run:
            try:
                write_report(report, records, exit_code=exit_code_of(failure),
                             error=(records_error(records) if failure is not None else None),
                             options={"skip_test_check": skip_test_check, "replace": replace,
                                      "allow_alias_downgrade": allow_alias_downgrade})
            except OSError as exc:
                if failure is None:
                    raise
                warn(f"could not write {report}: {exc.strerror or exc}")
    return records


def records_error(records: list[Published]) -> str | None:
    """The error that stopped a run: the first cell's with one."""
    return next((r.error for r in records if r.status in ("refused", "conflict", "failed") and r.error), None)


def write_report(path: Path, items: list[Published], *, exit_code: int = 0, error: str | None = None,
                 options: dict | None = None) -> None:
    """`reports/publish.json` (schema `imagegen.publish/2`), the input for release notes and the record of
    every run. Atomic; never contains credentials. Shape:

    `{"schema", "time", "exit_code", "error" (the one line that stopped the run, or null), "options"
    ({skip_test_check, replace, allow_alias_downgrade}), "images": [...]}`, one image per target in order:
    `cell`, `ref`, `tag`, `status` (`CELL_STATUSES`), `digest` (the manifest read back from the registry),
    `config_digest` (its config), `local_config_digest`, `image_id` (the engine's), `verified`,
    `media_type`, `compressed_size`, `pushed`, `previous` (what the tag held before, when another image),
    `tested`, `attempts` (engine push tries), `error` (the last error seen, one line), `aliases`: per alias
    `tag`, `ref`, `action` (`ALIAS_ACTIONS`), `digest` (the manifest it is pointed at), `previous` (what it
    held before), `version`, `previous_version`, `reason`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA, "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "exit_code": exit_code, "error": error, "options": options or {},
            "images": [{k: v for k, v in asdict(p).items() if k != "dry_run"} for p in items]}
    paths.write_json_atomic(path, data, indent=2, newline=True)
