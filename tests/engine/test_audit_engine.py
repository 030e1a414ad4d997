"""imagegen audit against the real engine: save stream, classic-builder layers, trace, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import docker.errors
import pytest

from imagegen.audit import audit
from imagegen.audit.synth import load, pattern, write_save_tar
from imagegen.audit.trace import trace

pytestmark = pytest.mark.engine

MB10 = 10 * 1024 * 1024
LABEL = {"imagegen.test": "1"}


@pytest.fixture(scope="module")
def api():
    from imagegen import engine

    try:
        return engine.api()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"no Docker engine: {exc}")


@pytest.fixture(scope="module")
def images(api):
    made: list[str] = []
    yield made
    for ref in made:
        try:
            api.remove_image(ref, force=True)
        except Exception:  # noqa: BLE001
            pass


def _tag(name: str) -> str:
    return f"imagegen-test/audit-{name}:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, images):
    d = tmp_path_factory.mktemp("eng")
    layers = [
        [("file", "/usr/share/doc/x/README", b"d" * 1234), ("file", "/etc/conf", b"o" * 99),
         ("file", "/a/same", b"S" * 4096), ("file", "/b/same", b"S" * 4096),
         ("file", "/usr/lib/python3.11/site-packages/demo/__init__.py", b"i" * 10),
         ("file", "/usr/lib/python3.11/site-packages/demo-1.0.dist-info/RECORD",
          b"demo/__init__.py,,\ndemo-1.0.dist-info/RECORD,,\n"),
         ("file", "/weird\nname\udcfe", b"w" * 7)],
        [("file", "/tmp/big", pattern(5, MB10, random=True), MB10)],
        [("whiteout", "/tmp/big"), ("file", "/etc/conf", b"n")],
    ]
    tag = _tag("loaded")
    tar = d / "img.tar"
    with open(tar, "wb") as f:
        write_save_tar(f, layers, tag=tag)
    assert tag in load(str(tar))
    images.append(tag)
    return tag, str(tar)


def test_engine_stream_matches_known_numbers(loaded):
    tag, tar = loaded
    a = audit(tag)
    r = a.report
    t = r["totals"]
    assert t["deleted"] == MB10 and t["overwritten"] == 99 and t["duplicates"] == 4096
    assert t["layers"] == t["visible"] + t["hidden"]
    assert sum(c["bytes"] for c in r["categories"]) == t["visible"]
    assert t["engine_size"] == t["layers"]  # the engine counts the same file bytes
    cats = {c["name"]: c["bytes"] for c in r["categories"]}
    assert cats["docs"] == 1234
    pk = {p["key"]: p for p in r["packages"]}
    assert pk["pip:demo"]["bytes"] == 10 + len(b"demo/__init__.py,,\ndemo-1.0.dist-info/RECORD,,\n")
    assert "/weird\nname\udcfe" in a.view.index
    # the tarball read directly gives the same accounting
    b = audit(tarball=tar).report
    for k in ("layers", "visible", "hidden", "duplicates", "files"):
        assert b["totals"][k] == t[k], k
    # the engine re-writes layer tars on save (its own tar headers), so gzip sizes agree only closely
    for la, lb in zip(r["layers"], b["layers"], strict=True):
        assert abs(la["compressed"] - lb["compressed"]) <= max(64, la["compressed"] // 100)


def test_classic_builder_image(api, images, tmp_path):
    bb = shutil.which("busybox")
    if not bb or "static" not in subprocess.run(["file", bb], capture_output=True, text=True).stdout:
        pytest.fail("needs a static busybox on the host")
    shutil.copy(bb, tmp_path / "busybox")
    (tmp_path / "big").write_bytes(os.urandom(MB10))
    (tmp_path / "doc.txt").write_bytes(b"D" * 3333)
    (tmp_path / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY doc.txt /usr/share/doc/demo/doc.txt\n"
        "COPY big /tmp/big\nCOPY doc.txt /copy/doc.txt\nRUN [\"/bin/busybox\", \"rm\", \"/tmp/big\"]\n")
    tag = _tag("built")
    steps, error = [], None
    for chunk in api.build(path=str(tmp_path), tag=tag, labels=LABEL, rm=True, forcerm=True, decode=True):
        line = chunk.get("stream", "").strip()
        if line.startswith("---> ") and " " not in line[5:]:
            steps.append(line[5:])  # a step's image: left dangling if a later step fails
        error = error or chunk.get("error")
    if error:
        for step in reversed(steps):
            try:
                api.remove_image(step)
            except docker.errors.APIError:
                pass
        pytest.fail(f"the test image did not build: {error.strip()}")
    images.append(tag)
    r = audit(tag).report
    t = r["totals"]
    assert t["deleted"] == MB10
    assert t["duplicates"] == 3333
    assert {c["name"]: c["bytes"] for c in r["categories"]}["docs"] == 3333
    assert sum(c["bytes"] for c in r["categories"]) == t["visible"]
    assert t["engine_size"] == t["layers"]
    created = [L["created_by"] for L in r["layers"]]
    assert any("COPY" in c and "/tmp/big" in c for c in created), created
    assert any("rm" in c for c in created), created
    deleting = next(L for L in r["layers"] if "rm" in L["created_by"])
    assert deleting["deletes"] == MB10
    assert all(L["compressed"] and L["compressed"] > 0 for L in r["layers"])


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "imagegen", "audit", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_audit_of_any_image_needs_no_matrix(loaded, tmp_path):
    """`audit IMAGE` outside a checkout (no matrix.yaml in sight): the matrix is read only by --trace."""
    r = subprocess.run([sys.executable, "-m", "imagegen", "audit", loaded[0], "--no-compressed", "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "IMAGEGEN_MATRIX"})
    assert r.returncode == 0 and json.loads(r.stdout)["image"] == loaded[0], r.stderr


def test_bad_input_one_line_errors(loaded):
    r = _cli("imagegen-test/does-not-exist:nope")
    assert r.returncode == 2 and r.stderr.startswith("error: no image imagegen-test/does-not-exist:nope in the "
                                                     "local engine") and len(r.stderr.splitlines()) == 1
    for command in (["audit"], ["verify"], ["verify", "--against", "also:bad"]):
        r = subprocess.run([sys.executable, "-m", "imagegen", *command, "BAD REF"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr == ("error: 'BAD REF' is not an image reference: repository name must be lowercase "
                            "(NAME[:TAG], NAME@sha256:DIGEST or an image ID)\n"), (command, r.stderr)
    r = _cli("whatever", env={"DOCKER_HOST": "unix:///tmp/imagegen-no-such-engine.sock"})
    assert r.returncode == 3 and r.stderr.startswith("error: Docker engine not reachable")
    assert len(r.stderr.splitlines()) == 1


def test_cli_compare_and_gates(loaded, tmp_path):
    tag, tar = loaded
    other = tmp_path / "o.tar"
    tag2 = _tag("other")
    with open(other, "wb") as f:
        write_save_tar(f, [[("file", "/usr/share/doc/x/README", b"d" * 34)]], tag=tag2)
    load(str(other))
    try:
        r = _cli(tag, "--compare", tag2, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        docs = next(c for c in doc["categories"] if c["name"] == "docs")
        assert docs["diff"] == 34 - 1234
        r = _cli(tag, "--max-wasted", "10MB", "--max-size", "1GB")
        assert r.returncode == 1 and "gate failed: wasted" in r.stderr and "image size" not in r.stderr
    finally:
        from imagegen import engine

        engine.api().remove_image(tag2, force=True)


def test_trace_distroless_like(images, tmp_path):
    if not shutil.which("strace"):
        pytest.fail("strace not installed on the host")

    def rd(p):
        return open(p, "rb").read()

    libc = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    ld = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    if not (os.path.exists(libc) and os.path.exists(ld)):
        pytest.fail("x86_64 glibc host expected")
    layers = [[("file", "/usr/bin/cat", rd("/usr/bin/cat"), None, 0o755),
               ("file", "/usr/lib/x86_64-linux-gnu/libc.so.6", rd(libc), None, 0o755),
               ("file", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", rd(ld), None, 0o755),
               ("symlink", "/lib", "usr/lib"), ("dir", "/lib64"),
               ("symlink", "/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
               ("file", "/data/used.txt", b"hello\n" * 1000), ("file", "/data/unused.txt", b"nope\n" * 5000)]]
    tag = _tag("trace")
    with open(tmp_path / "t.tar", "wb") as f:
        write_save_tar(f, layers, tag=tag)
    load(str(tmp_path / "t.tar"))
    images.append(tag)
    rep = trace(tag, ["/usr/bin/cat", "/data/used.txt"], timeout=120, labels=LABEL)
    assert rep["exit_code"] == 0
    assert rep["top_untouched"] == [{"path": "/data/unused.txt", "bytes": 25000}]
    assert rep["totals"]["untouched"] == 25000
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in rep["touched_paths"]
    assert any("not touched" in n or "never opened" in n for n in rep["notes"])
    assert any("advice" in n.lower() for n in rep["notes"])
    from imagegen import engine

    left = engine.api().containers(all=True, filters={"label": "imagegen.audit.trace=1"})
    assert not left, "trace containers must be removed"
    r = _cli("--trace-image", tag, "--", "/usr/bin/cat", "/data/used.txt")
    assert r.returncode == 0, r.stderr
    assert "never touched" in r.stdout and "advice" in r.stdout.lower()
