"""Access to the Docker engine through the Docker SDK, with user-grade errors."""

from __future__ import annotations

import dataclasses
import functools
import os

import docker
import docker.errors
import requests.exceptions

from .errors import EngineError

START_HINT = (
    "start it with `sudo dockerd &` or `sudo systemctl start docker`; "
    "`bash scripts/setup.sh` installs and starts one"
)


@functools.lru_cache(maxsize=1)
def client() -> docker.DockerClient:
    """A connected client, or EngineError naming DOCKER_HOST and how to start a daemon."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        c = docker.from_env(timeout=int(os.environ.get("IMAGEGEN_DOCKER_TIMEOUT", "600")))
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
