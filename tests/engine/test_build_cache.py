"""docker_build and remove_images on the real engine (classic builder): a build's clean-up removes the
step images it committed and never the ones it reused from the engine's cache, which belong to an
earlier build (another cell's, a user's) -- the CI failure of stop 15, where the integration builds
reused, then deleted, untagged images that existed before them."""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest

from imagegen import bases, matrix
from imagegen.build import Progress, docker_build, remove_images

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api():
    return docker.from_env().api


@pytest.fixture(scope="module")
def cell():
    return matrix.load(ROOT / "matrix.yaml").cells[0]


def _chain(api, image_id: str, stop: str) -> list[str]:
    """``image_id`` and its parents, up to (not including) ``stop``."""
    out = []
    while image_id and not image_id.startswith(stop):
        out.append(image_id)
        image_id = api.inspect_image(image_id).get("Parent", "")
    return out


def test_reused_step_images_survive_the_clean_up(api, cell, tmp_path):
    base = bases.ensure_role("bookworm", "builder")  # has a shell for RUN
    base_id = api.inspect_image(base)["Id"]
    nonce = uuid.uuid4().hex
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    # the "earlier build": two RUN steps, kept (a user's own build, or another cell's cache)
    (earlier / "Dockerfile").write_text(f"FROM {base}\nRUN echo {nonce} > /shared\nRUN echo one > /only-earlier\n")
    ours = tmp_path / "ours"
    ours.mkdir()
    # multi-stage, so the clean-up has a stage image that is not an ancestor of the result
    (ours / "Dockerfile").write_text(f"FROM {base} AS stage\nRUN echo {nonce} > /shared\nRUN echo two > /stage\n"
                                     f"FROM {base}\nCOPY --from=stage /stage /stage\n")
    made: list[str] = []
    try:
        earlier_id = None
        for chunk in api.build(path=str(earlier), rm=True, forcerm=True, decode=True, pull=False):
            assert "error" not in chunk, chunk
            if "aux" in chunk and "ID" in chunk["aux"]:
                earlier_id = chunk["aux"]["ID"]
        assert earlier_id
        earlier_chain = _chain(api, earlier_id, base_id)
        made += list(reversed(earlier_chain))  # removed child first
        assert len(earlier_chain) == 2  # /shared, then /only-earlier

        steps: list[str] = []
        image_id, _ = docker_build(cell, ours, "sha256:test", [], tmp_path / "build.log", Progress(None),
                                   step_images=steps)
        made.append(image_id)
        made += steps
        shared = earlier_chain[-1]  # the /shared step, reused from the cache
        assert "Using cache" in (tmp_path / "build.log").read_text()
        assert not any(shared.replace("sha256:", "").startswith(s) for s in steps), (steps, shared)
        assert not any(base_id.replace("sha256:", "").startswith(s) for s in steps), "FROM image counted as ours"
        assert steps, "the build committed step images of its own"

        remove_images(steps, keep={image_id})
        for kept in earlier_chain:  # the earlier build is whole
            api.inspect_image(kept)
        api.inspect_image(image_id)  # the result is kept
        gone = []
        for s in steps:
            try:
                api.inspect_image(s)
            except docker.errors.ImageNotFound:
                gone.append(s)
        assert gone, "the build's own stage images were not removed"
        for s in set(steps) - set(gone):  # what is left of ours is the result's own ancestry
            assert any(s in a for a in _chain(api, image_id, base_id)), f"{s} left behind"
    finally:
        for image in [image_id for image_id in reversed(made) if image_id]:
            try:
                api.remove_image(image, force=True, noprune=True)
            except docker.errors.APIError:
                pass
