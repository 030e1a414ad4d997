"""Access to the Docker engine through the Docker SDK, with user-grade errors."""

from __future__ import annotations

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
        raise EngineError(f"Docker engine not reachable at {where}: {_short(exc)}", hint=START_HINT) from None
    return c


def api() -> docker.APIClient:
    """The low-level API client (streamed builds, save streams)."""
    return client().api


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
