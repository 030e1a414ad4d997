"""The closure of the real Paddle 3.3.1 CPU wheel, and a distroless-like runtime it makes importable.

Downloads the wheel (and, for the image test, its dependencies) on the host with pip into
$IMAGEGEN_CACHE/test-wheels; the Contents index comes from the host cache (or the archive).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from imagegen import compat
from imagegen.closure import compute_closure, contents_index, needed_from_wheels
from imagegen.paths import cache_root

pytestmark = pytest.mark.integration

PADDLE = "paddlepaddle==3.3.1"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux1_x86_64"]
SCRIPT = Path(__file__).resolve().parents[2] / "imagegen" / "scripts" / "sysroot.py"
RUN = uuid.uuid4().hex[:12]
LABELS = {"imagegen.test": "1", "imagegen.test.run": RUN}
LABEL_LINE = f'LABEL imagegen.test="1" imagegen.test.run="{RUN}"'


def pip_download(dest: Path, *, deps: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", PADDLE, "--python-version", "3.11",
           "--only-binary=:all:", "-d", str(dest)]
    cmd += [a for p in PLATFORMS for a in ("--platform", p)]
    if not deps:
        cmd.append("--no-deps")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"pip download {PADDLE} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")


@pytest.fixture(scope="module")
def wheelhouse():
    dest = cache_root() / "test-wheels" / "paddle-3.3.1-cp311"
    dest.mkdir(parents=True, exist_ok=True)
    if not list(dest.glob("paddlepaddle-3.3.1-*.whl")):
        pip_download(dest, deps=False)
    return dest


@pytest.fixture(scope="module")
def paddle_wheel(wheelhouse):
    (whl,) = wheelhouse.glob("paddlepaddle-3.3.1-*.whl")
    return whl


@pytest.fixture(scope="module")
def index():
    base = compat.bases()["bookworm"]
    return contents_index(base.suite, "amd64", base.mirror)


def test_paddle_cpu_wheel_closure(paddle_wheel, index):
    t0 = time.monotonic()
    scan = needed_from_wheels([paddle_wheel])
    scan_s = time.monotonic() - t0
    base = compat.bases()["bookworm"]
    # a base with the C++ runtime but no OpenMP runtime
    with_cxx = index.sonames_of(["libc6", "libgcc-s1", "libstdc++6"])
    closure = compute_closure([paddle_wheel], with_cxx, base.suite, "amd64", base.mirror, scan=scan)
    assert closure.packages == ["libgomp1"]
    needers = closure.resolved["libgomp.so.1"][1]
    assert f"paddle/libs/libcommon.so ({paddle_wheel.name})" in needers
    assert f"paddle/libs/libdnnl.so.3 ({paddle_wheel.name})" in needers
    # bundled libraries are provided by the environment, never by packages
    assert closure.satisfied["libiomp5.so"] == "environment"
    assert closure.satisfied["libquadmath.so.0"] == "environment"
    # libc6's own closure (libc6 + libgcc-s1): the C++ runtime is missing too
    bare = compute_closure([paddle_wheel], index.sonames_of(["libc6", "libgcc-s1"]), base.suite, "amd64", base.mirror, scan=scan)
    assert bare.packages == ["libgomp1", "libstdc++6"]
    assert len(scan.native()) >= 15 and not scan.skipped
    print(f"scanned {paddle_wheel.name}: {len(scan.objects)} ELF objects in {scan_s:.1f}s "
          f"({scan.inflated_bytes / 1e6:.0f} MB inflated)")
    assert scan_s < 60


MKSTATUS = """#!/bin/sh
set -e
status="$1/var/lib/dpkg/status"
mkdir -p "$1/var/lib/dpkg"
: > "$status"
for deb in "$1"/var/cache/apt/archives/*.deb; do
  dpkg-deb --field "$deb" | sed '/^Package:/a Status: install ok installed' >> "$status"
  echo >> "$status"
done
"""


@pytest.fixture(scope="module")
def client():
    from imagegen import engine
    from imagegen.errors import EngineError

    try:
        return engine.client()
    except EngineError as exc:
        pytest.fail(str(exc))


def test_slim_runtime_imports_paddle_only_with_the_closure(client, wheelhouse, paddle_wheel, index, tmp_path):
    """builder venv + sysroot(closure) on a distroless-like runtime: `import paddle` works; the
    same runtime without the sysroot fails on libgomp.so.1 (trap 2 of FACTS.md)."""
    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap is not installed")
    base = compat.bases()["bookworm"]
    pip_download(wheelhouse, deps=True)
    ctx = tmp_path / "ctx"
    (ctx / "wheels").mkdir(parents=True)
    for whl in wheelhouse.glob("*.whl"):
        try:
            os.link(whl, ctx / "wheels" / whl.name)
        except OSError:
            shutil.copy(whl, ctx / "wheels")
    hook = tmp_path / "mkstatus.sh"
    hook.write_text(MKSTATUS)
    hook.chmod(0o755)
    tars = {"builder": tmp_path / "builder.tar", "runtime": tmp_path / "runtime.tar"}
    cmds = {
        "builder": ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3.11,python3.11-venv",
                    base.suite, str(tars["builder"]), base.mirror],
        # dash: Paddle 3.3.1 runs `ldd --version | awk ...` through /bin/sh at import
        # (paddle/base/core.py get_libc_ver); without any /bin/sh, Popen raises and the import fails.
        "runtime": ["mmdebstrap", "--quiet", "--variant=extract", "--include=libc6,python3.11-minimal,libpython3.11-stdlib,dash",
                    f'--extract-hook={hook} "$1"', base.suite, str(tars["runtime"]), base.mirror],
    }
    procs = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k, v in cmds.items()}
    for k, p in procs.items():
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"mmdebstrap {k}: {out[-2000:]}"
    with tarfile.open(tars["runtime"]) as tf:
        status = tf.extractfile("./var/lib/dpkg/status").read().decode()
    base_pkgs = re.findall(r"^Package: (\S+)", status, re.MULTILINE)
    closure = compute_closure([paddle_wheel], index.sonames_of(base_pkgs), base.suite, "amd64", base.mirror)
    assert closure.packages == ["libgomp1", "libstdc++6"]  # this runtime lacks the C++ runtime too
    (ctx / "closure.txt").write_text(closure.packages_txt())
    shutil.copy(SCRIPT, ctx / "sysroot.py")
    refs = {k: f"imagegen-test/closure-{k}:{RUN}" for k in tars}
    try:
        for k, tar in tars.items():
            client.api.import_image(src=str(tar), repository=refs[k].split(":")[0], tag=RUN, changes=[LABEL_LINE])
        stages = textwrap.dedent(f"""\
            FROM {refs['builder']} AS venv
            {LABEL_LINE}
            COPY wheels /wheels
            RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --quiet --no-index --find-links /wheels {PADDLE}

            FROM {refs['builder']} AS sysroot
            {LABEL_LINE}
            COPY --from={refs['runtime']} /var/lib/dpkg/status /tmp/base-status
            COPY closure.txt sysroot.py /tmp/
            RUN python3.11 /tmp/sysroot.py --packages /tmp/closure.txt --base-status /tmp/base-status --out /sysroot
            """)
        (ctx / "Dockerfile.with").write_text(stages + textwrap.dedent(f"""
            FROM {refs['runtime']}
            {LABEL_LINE}
            COPY --from=sysroot /sysroot/ /
            COPY --from=venv /opt/venv /opt/venv
            ENV HOME=/tmp
            """))
        (ctx / "Dockerfile.without").write_text(stages + textwrap.dedent(f"""
            FROM {refs['runtime']}
            {LABEL_LINE}
            COPY --from=venv /opt/venv /opt/venv
            ENV HOME=/tmp
            """))
        # libcommon.so first: without the sysroot, Paddle hides the loader's error behind its own
        code = (
            "import ctypes; ctypes.CDLL('/opt/venv/lib/python3.11/site-packages/paddle/libs/libcommon.so'); "
            "import paddle; print('paddle', paddle.__version__)"
        )
        results = {}
        for variant in ("with", "without"):
            tag = f"imagegen-test/closure-{variant}:{RUN}"
            client.images.build(path=str(ctx), dockerfile=f"Dockerfile.{variant}", tag=tag, labels=LABELS, rm=True, forcerm=True)
            c = client.containers.run(tag, ["/opt/venv/bin/python", "-c", code], detach=True, labels=LABELS)
            try:
                rc = c.wait(timeout=300)["StatusCode"]
                results[variant] = (rc, c.logs().decode())
            finally:
                c.remove(force=True)
        assert results["with"][0] == 0 and "paddle 3.3.1" in results["with"][1], results["with"][1][-2000:]
        rc, logs = results["without"]
        assert rc != 0 and re.search(r"(libgomp\.so\.1|libstdc\+\+\.so\.6): cannot open shared object file", logs), logs[-2000:]
    finally:
        for img in client.images.list(filters={"label": f"imagegen.test.run={RUN}"}):
            try:
                client.images.remove(img.id, force=True)
            except Exception:
                pass
