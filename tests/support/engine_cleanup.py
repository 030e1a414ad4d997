"""Removing what a test built, and only that: a test's tags, the images it built and their own
ancestors, never an image that existed before the test (the engine's own pruning would also take
an untagged parent that existed before: a layer the build reused from cache)."""

from __future__ import annotations

import docker


def remove_own(client, refs: list[str], created: set[str], preexisting: set[str]) -> None:
    """Remove the tests' tags ``refs`` and the images they built (``created`` and the images under
    ``refs``), with their own ancestors; never an image that existed before the tests."""
    for ref in refs:
        try:
            created.add(client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            pass
    # each chain walked before anything goes (a removed image has no parent to read)
    chains = [_own_chain(client.api, image_id, preexisting) for image_id in created]
    for ref in refs:
        try:
            client.api.remove_image(ref, noprune=True)
        except docker.errors.ImageNotFound:
            pass
    for chain in chains:
        _remove_chain(client.api, chain)


def _own_chain(api, image_id: str, preexisting: set[str]) -> list[str]:
    """``image_id`` and its ancestors up to the first image that existed before the tests."""
    chain: list[str] = []
    while image_id and image_id not in preexisting:
        try:
            info = api.inspect_image(image_id)
        except docker.errors.ImageNotFound:
            break
        chain.append(info["Id"])
        image_id = info.get("Parent") or ""
    return chain


def _remove_chain(api, chain: list[str]) -> None:
    """Remove the tests' own images, child first, each with ``noprune``: the engine's own pruning
    would also take an untagged parent that existed before (a layer the build reused from cache).
    Stops at an image something else still uses (a tag, a child)."""
    for image_id in chain:
        try:
            if api.inspect_image(image_id).get("RepoTags"):
                return
            api.remove_image(image_id, noprune=True)
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError:
            return
