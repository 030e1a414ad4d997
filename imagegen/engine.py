"""Access to the Docker engine through the Docker SDK, with user-grade errors; what kind of engine it is
(`describe`, `current`); and an image's identity on every image store (`config_digest`: its config
digest, read from the containerd store's save stream once and kept in an index under the cache root)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterable

import docker
import docker.errors
import requests.exceptions

from . import settings
from .errors import EngineError, UserInputError

START_HINT = (
    "start it with `sudo dockerd &` or `sudo systemctl start docker`; "
    "`bash scripts/setup.sh` installs and starts one"
)


@functools.lru_cache(maxsize=1)
def client() -> docker.DockerClient:
    """A connected client, or EngineError naming DOCKER_HOST and how to start a daemon."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        c = docker.from_env(timeout=settings.DOCKER_TIMEOUT.value())
        c.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"Docker engine not reachable at {where}: {short_error(exc)}", hint=START_HINT) from None
    reap_leftovers(c)
    return c


#: `docker info` DriverStatus entry of an engine on the containerd image store (Docker 24+ opt-in, the
#: default of fresh Docker 29 installs): image IDs there are manifest digests, not config digests
#: (docker/docs "containerd image store"; measured here on Docker 26.1.5, ../shared/FACTS.md).
CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """What kind of engine this process talks to (from `docker info` and `docker version`)."""

    server_version: str  # e.g. "20.10.24+dfsg1"
    api_version: str  # e.g. "1.41"
    storage_driver: str  # graph driver ("overlay2") or, on the containerd store, the snapshotter ("overlayfs")
    image_store: str  # "graphdriver" | "containerd"

    @property
    def id_is_config_digest(self) -> bool:
        """True when an image ID is its config digest (graph-driver store); on the containerd store it is
        the manifest (or index) digest."""
        return self.image_store == "graphdriver"

    @property
    def size_is_unpacked(self) -> bool:
        """True when `inspect`'s Size is the unpacked layers' bytes (graph-driver store). On the containerd
        store (Docker 26.1.5, measured) it is the content store's compressed blobs: 93 MB for an image of
        178 MB unpacked. Size budgets then use the save stream's uncompressed layer tars instead."""
        return self.image_store == "graphdriver"


def describe(info: dict, version: dict | None = None) -> EngineInfo:
    """An :class:`EngineInfo` from the engine's `info` and `version` payloads (no engine call)."""
    status = {str(k): str(v) for k, v in (info.get("DriverStatus") or []) if k is not None}
    store = "containerd" if status.get("driver-type") == CONTAINERD_SNAPSHOTTER else "graphdriver"
    return EngineInfo(server_version=(version or {}).get("Version") or info.get("ServerVersion") or "?",
                      api_version=(version or {}).get("ApiVersion") or "?",
                      storage_driver=info.get("Driver") or "?", image_store=store)


def engine_key() -> str:
    """Which engine this process talks to (DOCKER_HOST, or the default socket)."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


_DESCRIBED: dict[str, EngineInfo] = {}


def current() -> EngineInfo:
    """:func:`describe` of the engine this process talks to, asked once per :func:`engine_key`."""
    key = engine_key()
    if key not in _DESCRIBED:
        c = client()
        try:
            _DESCRIBED[key] = describe(c.info(), c.version())
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise EngineError(f"the engine at {key} did not describe itself: {short_error(exc)}") from None
    return _DESCRIBED[key]


def _journal_path():
    from . import paths

    return paths.engine_leftovers()


def remember_leftovers(container_ids) -> None:
    """Record containers an operation created but could not remove because the engine stopped
    answering; the next process that reaches that engine removes them (`reap_leftovers`)."""
    import json

    ids = sorted(set(container_ids))
    if not ids:
        return
    path = _journal_path()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    key = engine_key()
    data[key] = sorted(set(data.get(key, [])) | set(ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def reap_leftovers(c: docker.DockerClient) -> list[str]:
    """Remove the containers `remember_leftovers` recorded for this engine. Returns their IDs."""
    import json

    path = _journal_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    key = engine_key()
    ids = data.get(key) or []
    removed = []
    for cid in ids:
        for attempt in range(3):  # a container whose shim died can need a second try ("dead" first)
            try:
                c.api.remove_container(cid, force=True)
                removed.append(cid)
                break
            except docker.errors.NotFound:
                removed.append(cid)
                break
            except (docker.errors.APIError, requests.exceptions.RequestException):
                import time

                time.sleep(1 + attempt)
    left = [i for i in ids if i not in removed]
    if left:
        data[key] = left
    else:
        data.pop(key, None)
    for other in [k for k in data if k.startswith("unix://") and not os.path.exists(k[len("unix://"):])]:
        data.pop(other)  # an engine whose socket is gone for good (a test's private dockerd)
    try:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return removed


def answers(timeout: float = 5) -> bool:
    """Whether the engine answers a ping right now (a fresh connection, not the cached client)."""
    try:
        docker.DockerClient(base_url=engine_key(), timeout=timeout).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no"
        return False


def api() -> docker.APIClient:
    """The low-level API client (streamed builds, save streams)."""
    return client().api


def short_error(exc: BaseException) -> str:
    """The first line of an exception's text, at most 200 characters (for one-line errors)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def inspect_image(ref: str) -> dict:
    """The engine's inspect dict for the local image `ref` (a tag, ID or digest reference).

    UserInputError (exit 2) when `ref` is not a valid reference (the engine's HTTP 400 "invalid
    reference format", reason kept) or no such image is here; EngineError (exit 3) when the engine
    fails or cannot be reached. No registry is consulted."""
    try:
        return api().inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise UserInputError(f"no image {ref} in the local engine",
                             hint="`docker images` lists local images; no registry is consulted") from None
    except docker.errors.APIError as exc:
        status = getattr(exc, "status_code", None)
        explanation = str(getattr(exc, "explanation", "") or exc)
        if status == 404:
            raise UserInputError(f"no image {ref} in the local engine") from None
        if status == 400 and "invalid reference format" in explanation:
            why = explanation.split("invalid reference format", 1)[1].lstrip(": ").strip()
            raise UserInputError(f"{ref!r} is not an image reference" + (f": {why}" if why else "")
                                 + " (NAME[:TAG], NAME@sha256:DIGEST or an image ID)") from None
        raise EngineError(f"the engine refused to inspect {ref}: {short_error(exc)}") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"the engine connection failed while inspecting {ref}: {short_error(exc)}") from None


# --- image identity: the config digest ------------------------------------------------------------
#
# An image's config digest (the sha256 of its config JSON) names the same image on every engine and
# in every registry. On the graph-driver store it is the image ID; on the containerd store the ID is
# the manifest (or index) digest and `inspect` (API 1.45) does not give the config digest, so it is
# read once from the engine's save stream (or told by the build that made the image) and kept in a
# small index under the cache root, by image ID. The mapping is content-addressed (a manifest names
# exactly one config), so the index needs no engine key and is never wrong for an ID it holds.

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
#: blobs under this size are hashed while the save stream passes (configs, manifests, indexes); a
#: layer is never hashed or buffered, unless the manifest already named it as the config
CONFIG_BLOB_MAX = 4 << 20
#: most image IDs the index keeps (the oldest go first); about 150 bytes each
CONFIG_INDEX_MAX = 20000
INDEX_SCHEMA = "imagegen.config-digests/1"
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
_ATTESTATION = "attestation-manifest"  # annotation vnd.docker.reference.type of BuildKit's provenance


def _index_path():
    from . import paths

    return paths.config_digest_index()


def _read_index() -> dict[str, str]:
    try:
        data = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA or not isinstance(data.get("digests"), dict):
        return {}
    return {k: v for k, v in data["digests"].items()
            if isinstance(k, str) and isinstance(v, str) and DIGEST_RE.match(k) and DIGEST_RE.match(v)}


def known_config_digest(image_id: str) -> str | None:
    """The config digest the index holds for `image_id`, or None (no engine call)."""
    return _read_index().get(image_id)


def remember_config_digest(image_id: str, config_digest: str) -> None:
    """Record that the image `image_id` (its engine's image ID) has the config `config_digest`, e.g. from
    buildx's `containerimage.config.digest`. Both are `sha256:<64 hex>` (ValueError otherwise). Atomic,
    serialised with other processes; the index keeps the newest CONFIG_INDEX_MAX IDs."""
    from .flock import held

    for what, value in (("image ID", image_id), ("config digest", config_digest)):
        if not isinstance(value, str) or not DIGEST_RE.match(value):
            raise ValueError(f"not a {what}: {value!r}")
    path = _index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with held(path.with_name(path.name + ".lock")):
        digests = _read_index()
        if digests.get(image_id) == config_digest:
            return
        digests.pop(image_id, None)
        digests[image_id] = config_digest  # newest last
        for old in list(digests)[:max(0, len(digests) - CONFIG_INDEX_MAX)]:
            del digests[old]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"schema": INDEX_SCHEMA, "digests": digests}, indent=0))
        os.replace(tmp, path)


def config_digest(image: str) -> str:
    """The config digest (`sha256:<64 hex>`) of a local image (ID or reference), on every image store.

    Graph-driver store: the image ID. Containerd store: the index (:func:`remember_config_digest`), else
    read once from the engine's save stream (:func:`config_digest_from_save`) and kept in the index.
    EngineError (one line) for an unknown image, an engine that fails, or a save stream without it."""
    a = api()
    try:
        info = a.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise EngineError(f"no image {image} in the engine at {engine_key()}") from None
    except docker.errors.APIError as exc:
        raise EngineError(f"the engine refused to inspect {image}: {short_error(exc)}") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"the engine connection failed while inspecting {image}: {short_error(exc)}") from None
    image_id = info["Id"]
    if current().id_is_config_digest:
        return image_id
    known = known_config_digest(image_id)
    if known:
        return known
    chunks = a.get_image(image_id, chunk_size=1 << 20)
    try:
        digest = config_digest_from_save(chunks, image_id, platform=(info.get("Os") or "linux",
                                                                     info.get("Architecture") or "amd64"),
                                         what=image)
    finally:
        chunks.close()  # stops the engine's stream: the rest (mostly layers) is never read
    try:
        remember_config_digest(image_id, digest)
    except OSError:
        pass  # an unwritable cache only costs a second read next time
    return digest


class _ChunkFile:
    """A forward-only file over the chunks of a save stream (what `tarfile`'s stream mode reads)."""

    def __init__(self, chunks: Iterable[bytes], what: str):
        self._it = iter(chunks)
        self._buf = b""
        self._off = 0
        self._what = what

    def read(self, n: int = -1) -> bytes:
        while self._off >= len(self._buf):
            try:
                self._buf = next(self._it)
            except StopIteration:
                return b""
            except docker.errors.NotFound:
                raise EngineError(f"no image {self._what} in the engine at {engine_key()}") from None
            except docker.errors.APIError as exc:
                raise EngineError(f"the engine refused to save {self._what}: {short_error(exc)}") from None
            except (requests.exceptions.RequestException, OSError) as exc:
                raise EngineError(f"the save stream of {self._what} broke off: {short_error(exc)}") from None
            self._off = 0
        end = len(self._buf) if n < 0 else min(len(self._buf), self._off + n)
        out = self._buf[self._off:end]
        self._off = end
        return bytes(out)


def config_digest_from_save(chunks: Iterable[bytes], image_id: str, *, platform: tuple[str, str] = ("linux", "amd64"),
                            what: str | None = None) -> str:
    """The config digest of `image_id` from a save stream in the OCI layout (the containerd store's
    `docker save`): the blob named by the image ID is its manifest (an index is followed to the
    manifest of `platform`, (os, architecture)), whose `config.digest` names the config blob.

    Read forward once; it stops as soon as the manifest and the config it names have both passed (the
    engine writes blobs sorted by digest, so the config may come first). Blobs under CONFIG_BLOB_MAX
    are hashed as they pass (only JSON ones are kept, for the manifest), layers are skipped unread. The
    config blob must be in the stream and match its digest, and so must every manifest on the way.
    EngineError (one line, naming `what`) otherwise."""
    what = what or image_id
    if not DIGEST_RE.match(image_id or ""):
        raise ValueError(f"not an image ID: {image_id!r}")
    seen: dict[str, bool] = {}   # digest -> its blob matched it (only blobs that were hashed)
    docs: dict[str, dict] = {}   # digest -> small JSON blob, verified
    sizes: dict[str, int] = {}   # digest -> size of every blob that passed
    want: str | None = None      # the digest the resolution waits for (hashed whatever its size)
    try:
        with tarfile.open(fileobj=_ChunkFile(chunks, what), mode="r|", bufsize=1 << 18) as tf:
            for m in tf:
                name = m.name.removeprefix("./")
                digest = "sha256:" + name.removeprefix("blobs/sha256/")
                if not m.isreg() or not name.startswith("blobs/sha256/") or not DIGEST_RE.match(digest):
                    continue
                sizes[digest] = m.size
                if m.size >= CONFIG_BLOB_MAX and digest != want:
                    continue  # a layer: tarfile skips it unread
                ok, doc = _hash_blob(tf.extractfile(m), digest, keep=m.size < CONFIG_BLOB_MAX)
                seen[digest] = ok
                if doc is not None:
                    docs[digest] = doc
                found, want = _resolve(image_id, docs, seen, sizes, platform, what, final=False)
                if found:
                    return found
    except tarfile.TarError as exc:
        raise EngineError(f"the save stream of {what} is truncated or not a tar archive: {short_error(exc)}") \
            from None
    found, _ = _resolve(image_id, docs, seen, sizes, platform, what, final=True)
    assert found is not None
    return found


def _hash_blob(fh, digest: str, *, keep: bool) -> tuple[bool, dict | None]:
    """(whether the blob read from `fh` matches `digest`, its JSON object when `keep` and it is one)."""
    h = hashlib.sha256()
    kept: list[bytes] | None = [] if keep else None
    while block := fh.read(1 << 20):
        h.update(block)
        if kept is not None:
            if not kept and block.lstrip()[:1] != b"{":
                kept = None  # not JSON: a small layer
            else:
                kept.append(block)
    ok = "sha256:" + h.hexdigest() == digest
    if not ok or not kept:
        return ok, None
    try:
        doc = json.loads(b"".join(kept))
    except ValueError:
        return ok, None
    return ok, doc if isinstance(doc, dict) else None


def _resolve(image_id: str, docs: dict[str, dict], seen: dict[str, bool], sizes: dict[str, int],
             platform: tuple[str, str], what: str, *, final: bool) -> tuple[str | None, str | None]:
    """(config digest, None) once known and verified; (None, the digest still awaited) before that.
    With `final` (the stream ended) an answer or EngineError."""
    digest = image_id
    for _ in range(8):
        if digest in seen and not seen[digest]:
            raise EngineError(f"the save stream of {what} is corrupt: blob {digest[:19]}… does not match its digest")
        doc = docs.get(digest)
        if doc is None:
            if not final:
                return None, digest
            why = "is not a manifest" if digest in sizes else "is missing"
            raise EngineError(f"the save stream of {what} has no manifest for it: blob {digest[:19]}… {why}")
        if isinstance(doc.get("manifests"), list) or doc.get("mediaType") in _INDEX_TYPES:
            child = _pick(doc, platform, docs if final else None)
            if child is None:
                if not final:
                    return None, None
                raise EngineError(f"the save stream of {what} has no {'/'.join(platform)} image in index "
                                  f"{digest[:19]}…")
            digest = child
            continue
        config = (doc.get("config") or {}).get("digest") if isinstance(doc.get("config"), dict) else None
        if not isinstance(config, str) or not DIGEST_RE.match(config):
            raise EngineError(f"the save stream of {what} has a manifest without a sha256 config digest "
                              f"({digest[:19]}…)")
        if config in seen:
            if not seen[config]:
                raise EngineError(f"the save stream of {what} is corrupt: its config blob {config[:19]}… does not "
                                  "match its digest")
            return config, None
        if not final:
            return None, config
        why = (f"too large to have been checked ({sizes[config]} bytes, read before its manifest)"
               if config in sizes else "missing")
        raise EngineError(f"the save stream of {what}: its config blob {config[:19]}… is {why}")
    raise EngineError(f"the save stream of {what} nests image indexes more than 8 levels deep")


def _pick(index: dict, platform: tuple[str, str], present: dict | None) -> str | None:
    """The manifest an image index leads to for `platform` (os, architecture), never an attestation;
    with `present` (the stream has ended), else the first image manifest in `present`."""
    images = []
    for d in index.get("manifests") or []:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not DIGEST_RE.match(d["digest"]):
            continue
        plat = d.get("platform") if isinstance(d.get("platform"), dict) else {}
        if (d.get("annotations") or {}).get("vnd.docker.reference.type") == _ATTESTATION or plat.get("os") == "unknown":
            continue
        images.append((d["digest"], (plat.get("os"), plat.get("architecture")) == tuple(platform)))
    for digest, match in images:
        if match and (present is None or digest in present):
            return digest
    if present is not None:
        return next((digest for digest, _ in images if digest in present), None)
    return None
