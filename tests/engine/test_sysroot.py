"""sysroot.py in a real build: closure -> sysroot stage -> runtime, on runtimes of both /usr layouts.

Fixtures are bootstrapped here with mmdebstrap (they do not depend on imagegen.bases):
* builder: ``--variant=minbase`` + python3.11 (merged /usr, apt, dpkg), ~50 s;
* runtime: ``--variant=extract`` of libc6 + python3.11-minimal + libpython3.11-stdlib with a dpkg
  status written from the extracted packages (split /usr: /lib is a directory), no shell, ~8 s.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tarfile
import textwrap
import uuid
import zipfile
from pathlib import Path

import docker.errors
import pytest

from imagegen import compat
from imagegen.closure import compute_closure, contents_index

pytestmark = pytest.mark.engine

SCRIPT = Path(__file__).resolve().parents[2] / "imagegen" / "scripts" / "sysroot.py"
RUN = uuid.uuid4().hex[:12]
LABELS = {"imagegen.test": "1", "imagegen.test.run": RUN}
LABEL_LINE = f'LABEL imagegen.test="1" imagegen.test.run="{RUN}"'

MKSTATUS = """#!/bin/sh
# extract-hook: a dpkg status listing exactly the extracted packages
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


@pytest.fixture(scope="module")
def suite():
    base = compat.bases()["bookworm"]
    return base.suite, base.mirror


@pytest.fixture(scope="module")
def images(client, suite, tmp_path_factory):
    """(builder tag, runtime tag, runtime status text); every image of this run removed after."""
    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap is not installed")
    name, mirror = suite
    work = tmp_path_factory.mktemp("fixtures")
    hook = work / "mkstatus.sh"
    hook.write_text(MKSTATUS)
    hook.chmod(0o755)
    builder_tar, runtime_tar = work / "builder.tar", work / "runtime.tar"
    procs = [
        subprocess.Popen(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3.11", name, str(builder_tar), mirror],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ),
        subprocess.Popen(
            ["mmdebstrap", "--quiet", "--variant=extract", "--include=libc6,python3.11-minimal,libpython3.11-stdlib",
             f'--extract-hook={hook} "$1"', name, str(runtime_tar), mirror],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            pytest.fail(f"mmdebstrap failed: {out[-2000:]}")
    with tarfile.open(runtime_tar) as tf:
        status = tf.extractfile("./var/lib/dpkg/status").read().decode()
    tags = {}
    try:
        for role, tar in (("builder", builder_tar), ("runtime", runtime_tar)):
            tag = f"imagegen-test/sysroot-{role}:{RUN}"
            client.api.import_image(src=str(tar), repository=tag.split(":")[0], tag=RUN, changes=[LABEL_LINE])
            tags[role] = tag
        yield tags["builder"], tags["runtime"], status
    finally:
        for img in client.images.list(filters={"label": f"imagegen.test.run={RUN}"}):
            try:
                client.images.remove(img.id, force=True)
            except docker.errors.APIError:
                pass
        for tag in tags.values():
            try:
                client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass


def build_with_sysroot(client, tmp_path: Path, builder: str, runtime: str, packages: list[str] | str) -> str:
    ctx = tmp_path / f"ctx-{uuid.uuid4().hex[:6]}"
    ctx.mkdir()
    shutil.copy(SCRIPT, ctx / "sysroot.py")
    (ctx / "closure.txt").write_text(packages if isinstance(packages, str) else "".join(f"{p}\n" for p in packages))
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {builder} AS sysroot
        {LABEL_LINE}
        COPY --from={runtime} /var/lib/dpkg/status /tmp/base-status
        COPY closure.txt sysroot.py /tmp/
        RUN python3.11 /tmp/sysroot.py --packages /tmp/closure.txt --base-status /tmp/base-status --out /sysroot

        FROM {runtime}
        {LABEL_LINE}
        COPY --from=sysroot /sysroot/ /
        """))
    tag = f"imagegen-test/sysroot-out:{uuid.uuid4().hex[:12]}"
    client.images.build(path=str(ctx), tag=tag, labels=LABELS, rm=True, forcerm=True)
    return tag


def run_python(client, image: str, code: str) -> str:
    c = client.containers.run(image, ["python3.11", "-c", code], detach=True, labels=LABELS)
    try:
        res = c.wait(timeout=120)
        logs = c.logs().decode()
        assert res["StatusCode"] == 0, logs
        return logs
    finally:
        c.remove(force=True)


def tiny_elf(needed: tuple[str, ...]) -> bytes:
    """An x86-64 ELF shared object whose only content is a dynamic section needing `needed`."""
    strs, offs = b"\0", []
    for n in needed:
        offs.append(len(strs))
        strs += n.encode() + b"\0"
    strtab, dyn_off = 176, (176 + len(strs) + 7) // 8 * 8
    dyn = b"".join(struct.pack("<qQ", 1, o) for o in offs) + struct.pack("<qQqQqQ", 5, strtab, 10, len(strs), 0, 0)
    size = dyn_off + len(dyn)
    head = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    head += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    head += struct.pack("<IIQQQQQQ", 1, 4, 0, 0, 0, size, size, 0x1000)
    head += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dyn), len(dyn), 8)
    head += strs
    return head + bytes(dyn_off - len(head)) + dyn


def status_packages(text: str) -> list[str]:
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Package:")]


def test_closure_to_runtime_on_a_split_usr_base(client, images, suite, tmp_path):
    """The full chain: a wheel's NEEDED -> closure (Contents) -> sysroot stage -> loadable in the runtime."""
    builder, runtime, base_status = images
    name, mirror = suite
    wheel = tmp_path / "demo-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("demo/_core.so", tiny_elf(("libgomp.so.1", "libcap.so.2", "libc.so.6", "libz.so.1")))
    base_pkgs = status_packages(base_status)
    assert "libgomp1" not in base_pkgs and "libcap2" not in base_pkgs
    base_sonames = contents_index(name, "amd64", mirror).sonames_of(base_pkgs)
    closure = compute_closure([wheel], base_sonames, name, "amd64", mirror)
    assert closure.packages == ["libcap2", "libgomp1"]
    assert closure.satisfied["libz.so.1"] == "base"

    tag = build_with_sysroot(client, tmp_path, builder, runtime, closure.packages_txt())
    out = run_python(client, tag, textwrap.dedent("""\
        import ctypes, os
        ctypes.CDLL("libgomp.so.1"); ctypes.CDLL("libcap.so.2")
        print("loaded")
        print("lib-is-dir", os.path.isdir("/lib") and not os.path.islink("/lib"))
        apt = [os.path.join(d, f) for top in ("/var/lib/apt", "/var/cache/apt") for d, _, fs in os.walk(top) for f in fs]
        print("apt-files", [f for f in apt if not f.endswith("/lock")])
        print("changelog", os.path.exists("/usr/share/doc/libcap2/changelog.Debian.gz"))
        print("copyright", os.path.exists("/usr/share/doc/libcap2/copyright"))
        print("canonical", os.path.exists("/usr/lib/x86_64-linux-gnu/libcap.so.2"))
        print("list", sorted(os.listdir("/var/lib/dpkg/info")))
        print("STATUS"); print(open("/var/lib/dpkg/status").read())
        """))
    head, status = out.split("STATUS\n", 1)
    assert "loaded" in head and "lib-is-dir True" in head and "apt-files []" in head
    assert "changelog False" in head and "copyright True" in head and "canonical True" in head
    assert "libgomp1:amd64.list" in head and "libcap2:amd64.list" in head
    assert status_packages(status) == base_pkgs + ["libcap2", "libgomp1"]  # base verbatim, then the additions
    assert status.startswith(base_status.strip("\n").split("\n\n")[0])
    assert "Package: libgomp1\nStatus: install ok installed\n" in status


def test_merged_usr_base_keeps_its_symlinks(client, images, tmp_path):
    builder, _, _ = images
    tag = build_with_sysroot(client, tmp_path, builder, builder, ["libcap2", "libgomp1"])  # minbase as the runtime
    out = run_python(client, tag, textwrap.dedent("""\
        import ctypes, os
        ctypes.CDLL("libcap.so.2"); ctypes.CDLL("libgomp.so.1")
        print(os.readlink("/lib"), os.readlink("/bin"))
        """))
    assert out.split() == ["usr/lib", "usr/bin"]


def test_empty_closure_leaves_the_base_status_unchanged(client, images, tmp_path):
    builder, runtime, base_status = images
    tag = build_with_sysroot(client, tmp_path, builder, runtime, "# nothing\n")
    out = run_python(client, tag, "import sys; sys.stdout.write(open('/var/lib/dpkg/status').read())")
    assert status_packages(out) == status_packages(base_status)
    assert out.strip() == base_status.strip()


def test_unknown_package_fails_the_build_with_one_line(client, images, tmp_path):
    builder, runtime, _ = images
    with pytest.raises(docker.errors.BuildError) as info:
        build_with_sysroot(client, tmp_path, builder, runtime, ["no-such-package-imagegen"])
    text = re.sub(r"\x1b\[[0-9;]*m", "", "".join(c.get("stream", "") for c in info.value.build_log))
    errors = [ln for ln in text.splitlines() if ln.startswith("sysroot: error:")]
    assert errors == ["sysroot: error: apt-get install --download-only failed: E: Unable to locate package no-such-package-imagegen"]
