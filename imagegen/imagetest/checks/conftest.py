"""Fixtures of the image test suite. Targets come from the JSON file named by
$IMAGEGEN_TEST_TARGETS (written by imagegen.imagetest.run_targets, or by hand).

Every check is parametrized over the targets (session-scoped, so each image gets one set of
containers, removed when pytest moves to the next image). A check marked
`@pytest.mark.device("gpu")` only runs for GPU targets (and "cpu" for CPU targets).
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
from pathlib import Path

import pytest

from imagegen.imagetest.container import MOUNT, make_workdir, remove_workdir
from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, container, parse
from imagegen.imagetest.inventory import load_inventory
from imagegen.imagetest.target import TestTarget, load_targets

from ... import settings


def _targets(config) -> list[TestTarget]:
    cached = getattr(config, "_imagegen_targets", None)
    if cached is None:
        path = settings.TEST_TARGETS.value()
        cached = load_targets(path) if path else []
        config._imagegen_targets = cached
    return cached


def pytest_configure(config):
    config.addinivalue_line("markers", "device(name): only for targets of this device (cpu|gpu)")
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU and container runtime on the host")


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        ts = _targets(metafunc.config)
        metafunc.parametrize("target", ts, ids=[t.id for t in ts], indirect=True, scope="session")


def check_name(item) -> str:
    """`module.check[param]`, e.g. `policy.contents[no_docs]`."""
    name = item.module.__name__.split(".")[-1].removeprefix("test_") + "." + item.originalname.removeprefix("test_")
    extra = [str(v) for k, v in getattr(item, "callspec", None).params.items() if k != "target"] if hasattr(item, "callspec") else []
    return name + (f"[{','.join(extra)}]" if extra else "")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        m = item.get_closest_marker("device")
        t = getattr(item, "callspec", None) and item.callspec.params.get("target")
        if m and t is not None and t.device not in m.args:
            drop.append(item)
        else:
            keep.append(item)
            if t is not None:
                item.user_properties.extend([("image", t.id), ("check", check_name(item))])
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def target(request) -> TestTarget:
    return request.param


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    d = make_workdir()
    yield d
    remove_workdir(d)


@pytest.fixture(scope="session")
def inv(target):
    """What the image holds, read from the image itself (cached per image ID)."""
    return load_inventory(target.image)


@pytest.fixture(scope="session")
def image_attrs(target) -> dict:
    from imagegen.engine import client

    return client().api.inspect_image(target.image)


@pytest.fixture(scope="session")
def smoke(target, workdir) -> tuple[str, list[str]]:
    """The framework's smoke script placed in the work dir, plus the extra arguments its
    optional host half (`host_prepare(dir)`, e.g. building an ONNX model with the host's onnx)
    produced. Returns (path inside the mount, extra args)."""
    src = target.smoke_path
    if not src.exists():
        pytest.fail(f"{target.id}: smoke script {src} does not exist", pytrace=False)
    key = f"smoke-{abs(hash(target.id)) % 10**8}"
    d = workdir / key
    d.mkdir(exist_ok=True)
    shutil.copyfile(src, d / "smoke.py")  # neutral name: a script named paddle.py shadows paddle
    args: list[str] = []
    tree = ast.parse(src.read_text(), str(src))
    if any(isinstance(n, ast.FunctionDef) and n.name == "host_prepare" for n in tree.body):
        # the script's host half; its module level must not import the framework
        spec = importlib.util.spec_from_file_location(f"imagegen_smoke_{target.framework.name}", src)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        args = list(mod.host_prepare(str(d / "data")) or []) + [f"{MOUNT}/{key}/data"]
    for p in d.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    d.chmod(0o755)
    return f"{key}/smoke.py", args


@pytest.fixture(scope="session")
def ctr(target, workdir):
    """The hardened container: image's own user, read-only root, tmpfs /tmp, HOME=/tmp,
    no capabilities, no-new-privileges, no network."""
    c = container(target, workdir).start()
    yield c
    c.remove()


@pytest.fixture(scope="session")
def uid_ctr(target, workdir):
    """Arbitrary UID (12345, no passwd entry) on the image's own writable filesystem and HOME."""
    c = container(target, workdir, user="12345:12345", read_only=False).start()
    yield c
    c.remove()


@pytest.fixture(scope="session")
def info(target, ctr, smoke) -> dict:
    """What the framework reports about itself (smoke script `info`)."""
    script, _ = smoke
    try:
        return parse(ctr.python(script, "info", timeout=PROBE_TIMEOUT), f"`import {target.framework.import_name}`")
    except ProbeError as exc:
        pytest.fail(f"{target.id}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def envinfo(target, ctr) -> dict:
    try:
        return parse(ctr.python("probes/envinfo.py", timeout=PROBE_TIMEOUT), "environment probe")
    except ProbeError as exc:
        pytest.fail(f"{target.id}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def host(target, ctr, inv):
    """A testinfra Host on the hardened container (docker-py exec). Shell-less images get a
    static busybox from the read-only test mount; the image itself is not changed."""
    shell = ctr.shell(bool(inv.resolve("bin/sh")))
    if shell is None:
        pytest.skip("image has no /bin/sh and the host has no static busybox (apt-get install busybox-static)")
    return ctr.testinfra_host(shell)


@pytest.fixture(scope="session")
def gpu_host():
    from imagegen.imagetest import gpuhost

    return gpuhost.detect()
