"""Push built cells to the matrix's registry/namespace through the Docker SDK.

Only images imagegen built are pushed: the local tag must exist and carry an inputs digest label
(``labels.LABEL_DIGEST``). `imagegen build` moves a tag only after the image passed its tests, so a
tag imagegen built is a tested image. Credentials come from the environment (REGISTRY_USER and
REGISTRY_TOKEN) or docker's config; they are never written anywhere by imagegen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import docker.errors

from . import engine
from .labels import LABEL_DIGEST
from .console import log
from .errors import ImagegenError, UserInputError
from .matrix import Cell


@dataclass
class Pushed:
    cell: Cell
    remote: str
    digest: str | None
    dry_run: bool = False


def _auth() -> dict | None:
    user, token = os.environ.get("REGISTRY_USER"), os.environ.get("REGISTRY_TOKEN")
    if user and token:
        return {"username": user, "password": token}
    return None  # docker's own credential store (~/.docker/config.json) is used by the daemon call


def remote_ref(cell: Cell, registry: str | None = None, namespace: str | None = None) -> str:
    parts = [p for p in (registry or cell.registry, namespace if namespace is not None else cell.namespace,
                         cell.image) if p]
    return "/".join(parts) + ":" + cell.tag


def publish(cell: Cell, *, registry: str | None = None, namespace: str | None = None,
            dry_run: bool = False) -> Pushed:
    api = engine.api()
    try:
        info = api.inspect_image(cell.local_ref)
    except docker.errors.ImageNotFound:
        raise UserInputError(f"{cell.ref} is not built here; run `imagegen build --variant {cell.ref}` first") from None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if LABEL_DIGEST not in labels:
        raise UserInputError(f"{cell.ref} was not built by imagegen (no {LABEL_DIGEST} label); refusing to push it")
    target = remote_ref(cell, registry, namespace)
    if not (registry or cell.registry):
        raise UserInputError("no registry: set `registry:` in matrix.yaml or pass --registry")
    repo, tag = target.rsplit(":", 1)
    if dry_run:
        return Pushed(cell, target, None, dry_run=True)
    api.tag(info["Id"], repo, tag, force=True)
    log(f"pushing {target}")
    digest = None
    try:
        for chunk in api.push(repo, tag=tag, stream=True, decode=True, auth_config=_auth()):
            if "error" in chunk:
                raise ImagegenError(f"push of {target} failed: {chunk['error'].strip()}")
            aux = chunk.get("aux") or {}
            if "Digest" in aux:
                digest = aux["Digest"]
    except docker.errors.APIError as exc:
        raise ImagegenError(f"push of {target} failed: {str(exc).splitlines()[0]}") from None
    if digest is None:
        raise ImagegenError(f"push of {target} reported no digest; the registry may have refused it")
    return Pushed(cell, target, digest)
