"""Bootstrapped and registry bases against the real engine.

The bookworm roles are real product images (imagegen/data/bases.yaml), built once if missing and
kept: other tests and every build use them. Everything else a test creates (derived images,
containers, throwaway bases, the local registry) is labelled imagegen.test=1 and removed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from imagegen import bases, compat
from imagegen.bases import hook
from imagegen.errors import EngineError, ImagegenError

pytestmark = pytest.mark.engine

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("imagegen_registry_fixture", HERE / "registry_fixture.py")
registry_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(registry_fixture)

TEST_LABELS = {"imagegen.test": "1"}
PY_CHECK = "import ssl, sqlite3, json, ctypes, zlib, lzma, bz2; print('ok')"


@pytest.fixture(scope="module")
def dc() -> docker.DockerClient:
    from imagegen.engine import client

    try:
        return client()
    except EngineError as exc:
        pytest.fail(f"engine tests need a running engine: {exc}")


@pytest.fixture(scope="module")
def runtime_ref(dc) -> str:
    return bases.ensure_role("bookworm", "runtime")


@pytest.fixture(scope="module")
def builder_ref(dc) -> str:
    return bases.ensure_role("bookworm", "builder")


@pytest.fixture(scope="module")
def dev_ref(dc) -> str:
    return bases.ensure_role("bookworm", "dev")


@pytest.fixture(scope="module")
def runtime_files(dc, runtime_ref) -> dict[str, tarfile.TarInfo]:
    """Every member of the runtime's filesystem, read from the export stream of a created container."""
    cont = dc.api.create_container(runtime_ref, command=["/x"], labels=TEST_LABELS)
    try:
        stream = io.BufferedReader(bases._ChunkReader(dc.api.export(cont["Id"])), 1 << 20)
        members: dict[str, tarfile.TarInfo] = {}
        contents: dict[str, bytes] = {}
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for m in tf:
                name = m.name.lstrip("./").rstrip("/")
                members[name] = m
                if m.isfile() and (name.startswith(("etc/passwd", "etc/group", "var/lib/dpkg/")) or name == "etc/nsswitch.conf"):
                    contents[name] = tf.extractfile(m).read()
    finally:
        dc.api.remove_container(cont["Id"], force=True)
    members["__contents__"] = contents  # type: ignore[assignment]
    return members


def _run(dc, image: str, cmd: list[str], user: str | None = None, timeout: int = 60) -> tuple[int, str]:
    c = dc.containers.create(image, cmd, user=user, labels=TEST_LABELS, network_disabled=True)
    try:
        c.start()
        code = c.wait(timeout=timeout)["StatusCode"]
        return code, c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)


_BUILT: list[str] = []  # every image a test build created, intermediate stages included


def _build(dc, dockerfile: str, files: dict[str, bytes] | None = None, tag: str | None = None) -> str:
    """A classic-builder build (no cache) from an in-memory context; returns the image ID. Each
    image it creates, stage and step images included, is recorded for removal."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    image_id, log, step = None, [], ""
    for msg in dc.api.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True,
                            nocache=True, labels=TEST_LABELS):
        text = msg.get("stream", "")
        log.append(text)
        if text.startswith("Step "):
            step = text.split(":", 1)[1].strip().split(" ", 1)[0].upper()
        elif text.startswith(" ---> ") and step != "FROM" and len(text.split()) == 2:
            _BUILT.append(text.split()[1])
        if "aux" in msg and "ID" in msg["aux"]:
            image_id = msg["aux"]["ID"]
        if "error" in msg:
            _cleanup_built(dc)
            raise AssertionError(f"build failed: {msg['error']}\n{''.join(log)}")
    assert image_id, "".join(log)
    return image_id


def _cleanup_built(dc) -> None:
    while _BUILT:
        with contextlib.suppress(docker.errors.APIError):
            dc.images.remove(_BUILT.pop(), force=True)


@pytest.fixture(autouse=True)
def _remove_built_images(dc):
    yield
    _cleanup_built(dc)


def _rmi(dc, ref: str) -> None:
    try:
        dc.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


# --- runtime role -------------------------------------------------------------------------------


def test_runtime_is_small(dc, runtime_ref):
    size = dc.images.get(runtime_ref).attrs["Size"]
    assert size <= 60_000_000, f"runtime base is {size / 1e6:.1f} MB (budget 60 MB)"


def test_runtime_has_no_shell_or_package_tools(runtime_files):
    for absent in ("usr/bin/sh", "usr/bin/dash", "usr/bin/bash", "usr/bin/dpkg", "usr/bin/apt", "usr/bin/apt-get",
                   "usr/bin/perl", "usr/bin/ls", "usr/bin/cat", "usr/bin/awk", "usr/bin/openssl", "usr/bin/tar",
                   "usr/share/perl5", "etc/apt", "var/lib/apt", "var/cache/apt", "usr/share/man"):
        assert absent not in runtime_files, absent
    for present in ("usr/sbin/ldconfig", "etc/ld.so.cache", "etc/ssl/certs/ca-certificates.crt", "usr/bin/python3.11",
                    "etc/os-release", "etc/nsswitch.conf", "etc/localtime", "usr/share/zoneinfo/Etc/UTC",
                    "usr/share/doc/libc6/copyright", "var/lib/dpkg/status"):
        assert present in runtime_files, present
    assert runtime_files["usr/bin/python3"].linkname == "python3.11"
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        assert runtime_files[link].issym() and runtime_files[link].linkname == target
    docs = [n for n in runtime_files if n.startswith("usr/share/doc/") and n.count("/") >= 4]
    assert docs and all(n.endswith("/copyright") for n in docs), docs[:5]
    assert runtime_files["tmp"].mode & 0o7777 == 0o1777
    home = runtime_files["home/app"]
    assert (home.uid, home.gid) == (1000, 1000)
    c = runtime_files["__contents__"]
    assert b"app:x:1000:1000:app:/home/app:" in c["etc/passwd"] and c["etc/passwd"].startswith(b"root:x:0:0:")
    assert b"app:x:1000:" in c["etc/group"]
    assert b"hosts: files dns" in c["etc/nsswitch.conf"]


def test_runtime_dpkg_status_lists_exactly_what_is_present(runtime_files):
    contents = runtime_files["__contents__"]
    paras = bases.parse_deb822(contents["var/lib/dpkg/status"].decode())
    names = {p["Package"] for p in paras}
    assert {"libc6", "libc-bin", "python3.11-minimal", "libpython3.11-stdlib", "ca-certificates", "tzdata",
            "base-files", "netbase"} <= names
    assert not names & {"dpkg", "debconf", "perl-base", "mawk", "openssl", "tar", "apt"}
    assert all(p["Status"] == "install ok installed" and p.get("Version") for p in paras)
    lists = {n.rsplit("/", 1)[1][: -len(".list")].split(":")[0]
             for n in runtime_files if n.startswith("var/lib/dpkg/info/") and n.endswith(".list")}
    assert lists == names
    # consistent for apt: every remaining Depends clause is satisfied inside the set
    provided = names | {a[0] for p in paras for a in hook.parse_depends(p.get("Provides", ""))}
    for p in paras:
        for field in ("Depends", "Pre-Depends"):
            for alts in hook.parse_depends(p.get(field, "")):
                assert set(alts) & provided, (p["Package"], alts)
    # each kept package's files are present: its .list names existing paths only
    for n, data in contents.items():
        if n.startswith("var/lib/dpkg/info/libc6"):
            assert b"/usr/lib/x86_64-linux-gnu/libc.so.6" in data or b"/lib/x86_64-linux-gnu/libc.so.6" in data


@pytest.mark.parametrize("uid", ["1000", "12345"])
def test_runtime_python_runs_as_any_uid(dc, runtime_ref, uid):
    code, out = _run(dc, runtime_ref, ["python3", "-c", PY_CHECK], user=uid)
    assert (code, out.strip()) == (0, "ok"), out


def test_runtime_tls_trust_and_tz(dc, runtime_ref):
    code, out = _run(dc, runtime_ref, ["python3", "-c", (
        "import ssl, zoneinfo, socket, pwd, os\n"
        "ctx = ssl.create_default_context(); n = len(ctx.get_ca_certs())\n"
        "print(n > 100, zoneinfo.ZoneInfo('Asia/Tokyo').key, socket.getservbyname('https'), pwd.getpwuid(1000).pw_dir)")],
        user="1000")
    assert out.split() == ["True", "Asia/Tokyo", "443", "/home/app"], out


def test_runtime_labels_record_inputs(dc, runtime_ref):
    labels = dc.images.get(runtime_ref).labels
    spec = compat.bases()["bookworm"]
    p = bases.LABEL_PREFIX
    assert labels[f"{p}.suite"] == "bookworm" and labels[f"{p}.variant"] == "extract"
    assert labels[f"{p}.mirror"] == spec.mirror and labels[f"{p}.recipe"] == str(compat.BOOTSTRAP_RECIPE_VERSION)
    assert labels[f"{p}.packages"] == ",".join(sorted(spec.role("runtime").packages))
    assert len(labels[f"{p}.rootfs-sha256"]) == 64 and int(labels[f"{p}.source-date-epoch"]) > 0
    assert labels["org.opencontainers.image.ref.name"] == runtime_ref
    assert labels["org.opencontainers.image.created"].endswith("Z")


def test_ldconfig_exec_form_registers_a_library_dir(dc, runtime_ref, dev_ref):
    """GPU cells register nvidia/*/lib dirs with ld.so.conf.d + RUN ["/sbin/ldconfig"] (no shell in
    the runtime); a library then loads by its versioned SONAME. The library is compiled in the dev role."""
    dockerfile = (f"FROM {dev_ref} AS cc\n"
                  "RUN mkdir /out && echo 'int imagegen_answer(void) { return 42; }' > /tmp/a.c && "
                  "gcc -shared -fPIC -Wl,-soname,libimagegentest.so.7 -o /out/libimagegentest.so.7.0.1 /tmp/a.c\n"
                  f"FROM {runtime_ref}\n"
                  "COPY --from=cc /out/libimagegentest.so.7.0.1 /opt/testlib/\n"
                  "COPY testlib.conf /etc/ld.so.conf.d/testlib.conf\n"
                  'RUN ["/sbin/ldconfig"]\n'
                  'RUN ["python3", "-c", "import ctypes; assert ctypes.CDLL(\'libimagegentest.so.7\').imagegen_answer() == 42"]\n')
    image = _build(dc, dockerfile, {"testlib.conf": b"/opt/testlib\n"})
    try:
        code, out = _run(dc, image, ["/sbin/ldconfig", "-p"])
        assert code == 0 and "libimagegentest.so.7 (libc6,x86-64) => /opt/testlib/libimagegentest.so.7" in out, out[:400]
    finally:
        _rmi(dc, image)


def test_builder_venv_runs_on_runtime(dc, runtime_ref, builder_ref):
    """Same Python build: a venv made in the builder runs when copied onto the runtime."""
    dockerfile = (f"FROM {builder_ref} AS build\n"
                  "RUN python3 -m venv /opt/venv && /opt/venv/bin/python -c 'import ensurepip'\n"
                  f"FROM {runtime_ref}\n"
                  "COPY --from=build /opt/venv /opt/venv\n"
                  'RUN ["/opt/venv/bin/python", "-c", "import sys, ssl; assert sys.prefix == \'/opt/venv\'"]\n')
    image = _build(dc, dockerfile)
    try:
        code, out = _run(dc, image, ["/opt/venv/bin/python", "-c", "import sys; print(sys.prefix)"], user="1000")
        assert (code, out.strip()) == (0, "/opt/venv"), out
    finally:
        _rmi(dc, image)


def test_runtime_status_lets_apt_compute_missing_packages(dc, runtime_ref, builder_ref):
    """apt, pointed at the runtime's status file, installs only what the runtime lacks."""
    dockerfile = (f"FROM {runtime_ref} AS rt\nFROM {builder_ref}\n"
                  "COPY --from=rt /var/lib/dpkg/status /tmp/runtime.status\n"
                  "RUN apt-get -q update >/dev/null && apt-get -s -o Dir::State::status=/tmp/runtime.status "
                  "install libgomp1 python3.11-minimal | tee /tmp/plan && rm -rf /var/lib/apt/lists/*\n")
    image = _build(dc, dockerfile)
    try:
        c = dc.containers.create(image, ["cat", "/tmp/plan"], labels=TEST_LABELS)
        try:
            c.start()
            c.wait(timeout=60)
            plan = c.logs().decode()
        finally:
            c.remove(force=True)
        inst = sorted(line.split()[1] for line in plan.splitlines() if line.startswith("Inst "))
        assert inst == ["libgomp1"], plan
        assert "python3.11-minimal is already the newest version" in plan
    finally:
        _rmi(dc, image)


def test_role_sonames_streams_and_caches(dc, runtime_ref, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    since = int(time.time()) - 1
    names = bases.role_sonames(runtime_ref)
    until = int(time.time()) + 1
    assert {"libc.so.6", "ld-linux-x86-64.so.2", "libssl.so.3", "libz.so.1", "libsqlite3.so.0", "libffi.so.8"} <= names
    assert "libgomp.so.1" not in names and "libstdc++.so.6" not in names
    image_id = dc.images.get(runtime_ref).id.split(":", 1)[1]
    cache = tmp_path / "sonames" / f"{image_id}.json"
    assert set(json.loads(cache.read_text())) == names
    # the export container was created, never started, and removed
    events = list(dc.events(since=since, until=until, decode=True,
                            filters={"type": "container", "label": "imagegen.tmp=1"}))
    created = {e["id"] for e in events if e.get("Action") == "create" and e.get("from") == f"sha256:{image_id}"}
    assert created, events
    assert not [e for e in events if e.get("Action") == "start" and e["id"] in created]
    assert {e["id"] for e in events if e.get("Action") == "export"} >= created
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_exists(dc, c) for c in created):
        time.sleep(0.5)
    assert not any(_exists(dc, c) for c in created)
    cache.write_text(json.dumps(["marker.so.1"]))
    assert bases.role_sonames(runtime_ref) == {"marker.so.1"}  # served from the cache by image ID


def _exists(dc, container_id: str) -> bool:
    try:
        dc.api.inspect_container(container_id)
        return True
    except docker.errors.NotFound:
        return False


# --- reproducibility, failures, interruption ----------------------------------------------------


def test_runtime_rootfs_is_byte_identical_across_builds(tmp_path, dc, runtime_ref):
    spec = compat.bases()["bookworm"]
    tarballs = []
    for i in range(2):
        work = tmp_path / f"w{i}"
        work.mkdir()
        tarballs.append(bases.bootstrap_tarball(spec, "runtime", work))
    assert tarballs[0].sha256 == tarballs[1].sha256
    # and one image ID: the config comes from the tarball and its SOURCE_DATE_EPOCH, not the clock
    before = {i.id for i in dc.images.list(all=True)}
    ids = []
    try:
        for tb in tarballs:
            labels = bases._labels("bookworm", spec, "runtime", tb, runtime_ref)
            ids.append(bases._load(tb, bases.base_config(labels, "runtime", tb, "bookworm/runtime"), "test"))
        assert ids[0] == ids[1]
    finally:
        for image_id in set(ids) - before:  # never the base the other tests use, if it is the same image
            dc.api.remove_image(image_id, noprune=True)
    # the image in the engine came from the same archive state only if the epoch matches; then it is this one
    labels = dc.images.get(runtime_ref).labels
    if labels.get(f"{bases.LABEL_PREFIX}.source-date-epoch") == str(bases.source_date_epoch(spec)):
        assert labels[f"{bases.LABEL_PREFIX}.rootfs-sha256"] == tarballs[0].sha256
        assert dc.images.get(runtime_ref).id == ids[0]


def _throwaway(packages: list[str], variant: str = "extract") -> compat.BaseSpec:
    return compat.BaseSpec.model_validate({
        "source": "bootstrap", "libc": "glibc", "python": "3.11", "suite": "bookworm",
        "roles": {"runtime": {"variant": variant, "packages": packages},
                  "builder": {"variant": "minbase", "packages": packages}}})


def test_failed_download_names_package_and_leaves_nothing(dc, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_TMPDIR", str(tmp_path))
    spec = _throwaway(["libc6", "imagegen-no-such-package"])
    ref = spec.role_ref("throwaway", "runtime")
    with pytest.raises(ImagegenError) as exc:
        bases.ensure_role("throwaway", "runtime", spec=spec)
    msg = str(exc.value)
    assert "imagegen-no-such-package" in msg and "http://deb.debian.org/debian" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(docker.errors.ImageNotFound):
        dc.images.get(ref)


def test_unreachable_mirror_is_named(dc, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_TMPDIR", str(tmp_path))
    spec = _throwaway(["libc6"]).model_copy(update={"mirror": "http://127.0.0.1:9/debian"})
    with pytest.raises(ImagegenError, match=r"127\.0\.0\.1:9/debian"):
        bases.ensure_role("throwaway", "runtime", spec=spec)
    assert list(tmp_path.iterdir()) == []


DRIVER = """
import sys
from imagegen import bases, compat
spec = compat.BaseSpec.model_validate({"source": "bootstrap", "libc": "glibc", "python": "3.11",
    "suite": "bookworm", "roles": {"builder": {"variant": "minbase", "packages": ["python3.11"]}}})
print(bases.ensure_role("interrupted", "builder", spec=spec, force=True))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_install_leaves_no_mounts_tempdirs_or_tags(dc, tmp_path, sig):
    """Interrupted while mmdebstrap has /proc, /sys and /dev mounted in its chroot."""
    spec = compat.BaseSpec.model_validate({"source": "bootstrap", "libc": "glibc", "python": "3.11",
                                           "suite": "bookworm",
                                           "roles": {"builder": {"variant": "minbase", "packages": ["python3.11"]}}})
    ref = spec.role_ref("interrupted", "builder")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, IMAGEGEN_TMPDIR=str(tmp), IMAGEGEN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "installing" in line:
                time.sleep(2)
                proc.send_signal(sig)
                break
        rest = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode == 0:  # the signal came too late (or was ignored): the base was tagged
            with contextlib.suppress(docker.errors.ImageNotFound):
                dc.images.remove(ref)
    assert any("installing" in s for s in seen), "".join(seen)
    assert proc.returncode != 0, rest
    assert list(tmp.iterdir()) == [], list(tmp.rglob("*"))[:10]
    assert str(tmp) not in Path("/proc/self/mountinfo").read_text()
    with pytest.raises(docker.errors.ImageNotFound):
        dc.images.get(ref)
    leftover = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True).stdout.strip()
    assert leftover == ""


# --- registry bases -----------------------------------------------------------------------------


@pytest.fixture
def registry():
    if not registry_fixture.shutil.which("docker-registry"):
        pytest.fail("docker-registry not installed (scripts/setup.sh installs it)")
    with registry_fixture.LocalRegistry() as reg:
        yield reg


def test_registry_base_pulled_by_digest_and_used_in_from(dc, runtime_ref, registry):
    repo = f"{registry.host}/imagegen/bookworm-runtime"
    nonce = uuid.uuid4().hex[:12]
    # a distinct image (own config) so that removing it locally really removes it
    pushed_id = _build(dc, f"FROM {runtime_ref}\nLABEL imagegen.test.nonce={nonce}\n", tag=f"{repo}:{nonce}")
    built = []
    try:
        digest = None
        for msg in dc.api.push(repo, tag=nonce, stream=True, decode=True):
            assert "error" not in msg, msg
            digest = (msg.get("aux") or {}).get("Digest") or digest
        assert digest and digest.startswith("sha256:")
        dc.images.remove(pushed_id, force=True)
        with pytest.raises(docker.errors.ImageNotFound):
            dc.images.get(pushed_id)

        ref = f"{repo}:{nonce}@{digest}"
        spec = compat.BaseSpec.model_validate({"source": "registry", "libc": "glibc", "python": "3.11",
                                               "roles": {"runtime": {"ref": ref}}})
        got = bases.ensure_role("localreg", "runtime", spec=spec)
        assert got == f"{repo}@{digest}"
        assert dc.images.get(got).id == pushed_id
        assert f"{repo}@{digest}" in dc.images.get(pushed_id).attrs["RepoDigests"]
        # present now: no second pull even with the registry gone
        registry.stop()
        assert bases.ensure_role("localreg", "runtime", spec=spec) == got

        image = _build(dc, f"FROM {repo}@{digest}\n"
                           'RUN ["python3", "-c", "print(\'from digest\')"]\n')
        built.append(image)
        code, out = _run(dc, image, ["python3", "-c", PY_CHECK], user="12345")
        assert (code, out.strip()) == (0, "ok")
    finally:
        for image in built + [pushed_id]:
            _rmi(dc, image)


def test_registry_base_unreachable_names_ref_and_offline_path(dc):
    ref = "127.0.0.1:1/imagegen/none:1@sha256:" + "0" * 64
    with pytest.raises(EngineError) as exc:
        bases.ensure_registry(ref)
    msg = str(exc.value)
    assert ref in msg and "unreachable" in msg and "docker load" in msg and "imagegen base build" in msg


def test_base_list_json_reports_presence_and_size(dc, runtime_ref):
    code = "from imagegen.cli.base_cmds import base_list; base_list(json_out=True)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, NO_COLOR="1"))
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    rt = next(r for r in rows if (r["base"], r["role"]) == ("bookworm", "runtime"))
    assert rt["ref"] == runtime_ref and rt["present"] is True and 0 < rt["size"] <= 60_000_000
    alpine = next(r for r in rows if r["base"] == "alpine3.20")
    assert alpine["source"] == "registry" and "@sha256:" in alpine["ref"]
