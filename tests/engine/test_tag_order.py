"""The pipeline's central promise on tiny images: the tag moves only after the image's tests pass, a
failed image is not left behind, and the image a moved tag leaves behind is removed
(pipeline.tag_if_tested and discard_untagged, the steps build_one runs after the build)."""

from __future__ import annotations

import io
import tarfile
import uuid

import docker
import pytest

from imagegen import pipeline
from imagegen.errors import GateFailed
from imagegen.imagetest.runner import CheckResult, Summary

pytestmark = pytest.mark.engine

REPO = "imagegen-test/tag-order"


@pytest.fixture
def client():
    c = docker.from_env()
    made: list[str] = []
    yield c, made
    for ref in [f"{REPO}:t", *made]:
        try:
            c.api.remove_image(ref, force=True)
        except docker.errors.ImageNotFound:
            pass
    left = [i for i in made if i.startswith("sha256:") and _exists(c, i)]
    assert not left, f"images the test made are still there: {left}"


def _tiny(client, made: list[str]) -> str:
    """A one-file image FROM scratch, unique, labelled as a test image."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY f /f\nLABEL imagegen.test=1\n"),
                           ("f", uuid.uuid4().hex.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = client.images.build(fileobj=buf, custom_context=True, rm=True, forcerm=True)
    made.append(image.id)
    parent = client.api.inspect_image(image.id).get("Parent")
    if parent:  # the classic builder's COPY step image: removed too (children first, in the fixture)
        made.append(parent)
    return image.id


def _summary(image: str, outcome: str) -> Summary:
    return Summary([CheckResult(image, "smoke", outcome, 0.1, "" if outcome == "passed" else "boom")],
                   exit_code=0 if outcome == "passed" else 1)


def _exists(c, ref: str) -> bool:
    try:
        c.api.inspect_image(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def test_the_tag_moves_only_after_the_tests_pass(client):
    c, made = client
    old, bad, good = _tiny(c, made), _tiny(c, made), _tiny(c, made)
    c.api.tag(old, REPO, "t")
    ran = []

    def failing():
        ran.append("bad")
        return _summary(bad, "failed")

    with pytest.raises(GateFailed, match=r"failed its tests \(smoke: boom\); the tag was not moved"):
        pipeline.tag_if_tested("tiny:t", f"{REPO}:t", bad, failing)
    assert ran == ["bad"] and c.api.inspect_image(f"{REPO}:t")["Id"] == old
    pipeline.discard_untagged(bad)  # what build_one does with an image whose tests failed
    assert not _exists(c, bad)

    pipeline.tag_if_tested("tiny:t", f"{REPO}:t", good, lambda: _summary(good, "passed"))
    assert c.api.inspect_image(f"{REPO}:t")["Id"] == good
    assert not _exists(c, old)  # left behind by the tag, named by nothing else: removed


def test_without_tests_the_tag_moves_and_an_image_still_named_elsewhere_stays(client):
    c, made = client
    old, new = _tiny(c, made), _tiny(c, made)
    c.api.tag(old, REPO, "t")
    c.api.tag(old, REPO, "keep")
    made.append(f"{REPO}:keep")
    pipeline.tag_if_tested("tiny:t", f"{REPO}:t", new, None)  # --no-test
    assert c.api.inspect_image(f"{REPO}:t")["Id"] == new
    assert _exists(c, old)  # another tag still names it
