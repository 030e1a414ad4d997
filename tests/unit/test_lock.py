"""Lock files: resolution for a target platform with the host's real pip, against hand-made wheels
served from a local file:// index (and a loopback HTTP server where the network matters).

The "host pip configuration" of these tests is a pip.conf in a temporary directory whose index is the
local one, so nothing here reaches PyPI."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Annotated

import pytest
import typer

from imagegen import lock as L
from imagegen.errors import ImagegenError, UserInputError

# --- helpers (also used by test_wheelhouse.py) ---------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(directory: Path, name: str, version: str, requires: list[str] = (), *,
               tag: str = "py3-none-any", requires_python: str | None = None, payload: bytes = b"") -> Path:
    """A minimal valid wheel: one module named after the project, METADATA, WHEEL, RECORD."""
    dist = name.replace("-", "_")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    pure = tag.endswith("none-any")
    files = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode() + payload,
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: imagegen-tests\nRoot-Is-Purelib: {str(pure).lower()}\n"
                          + "".join(f"Tag: {t}\n" for t in _expand(tag))).encode(),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in files.items():
            zf.writestr(zipfile.ZipInfo(p, date_time=(2020, 1, 1, 0, 0, 0)), d)
        zf.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), record)
    return path


def _expand(tag: str) -> list[str]:
    py, abi, plats = tag.split("-")
    return [f"{p}-{a}-{pl}" for p in py.split(".") for a in abi.split(".") for pl in plats.split(".")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_index(root: Path, wheels: list[Path], *, hashes: bool = True) -> Path:
    """A PEP 503 simple index at root/simple over files in root/files. Returns root/simple."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        target = files / w.name
        if w.resolve() != target.resolve():
            target.write_bytes(w.read_bytes())
        project = w.name.split("-")[0].replace("_", "-").lower()
        by_project.setdefault(project, []).append(target)
    simple = root / "simple"
    for project, paths in by_project.items():
        d = simple / project
        d.mkdir(parents=True, exist_ok=True)
        links = "".join(
            f'<a href="../../files/{p.name}{"#sha256=" + sha256(p) if hashes else ""}">{p.name}</a><br/>\n'
            for p in paths)
        (d / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    simple.mkdir(parents=True, exist_ok=True)
    (simple / "index.html").write_text("<!DOCTYPE html><html><body></body></html>\n")
    return simple


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A hermetic 'host pip configuration': index = a local file:// index; IMAGEGEN_CACHE in tmp."""
    root = tmp_path / "host"
    simple = make_index(root, [])
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {simple.as_uri()}\nno-cache-dir = true\n")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX",
                "IMAGEGEN_SKIP_UNREACHABLE_INDEXES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IMAGEGEN_INDEX_TIMEOUT", "2")

    class Host:
        path = root
        index = simple

        def publish(self, *wheels: Path, hashes: bool = True) -> None:
            existing = sorted((root / "files").glob("*.whl"))
            make_index(root, [*existing, *wheels], hashes=hashes)

    return Host()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Serve a directory on 127.0.0.1 (pip counts loopback as a secure origin). Yields a starter."""
    servers = []

    def start(directory: Path, handler=None) -> str:
        h = handler or functools.partial(_Quiet, directory=str(directory))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# --- pure logic ----------------------------------------------------------------------------------


def test_platform_tags_cover_every_manylinux_of_the_glibc():
    tags = L.platform_tags("x86_64", glibc="2.36")
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
            "manylinux_2_5_x86_64"} <= set(tags)
    assert tags.index("manylinux_2_17_x86_64") < tags.index("manylinux2014_x86_64") < tags.index("manylinux_2_16_x86_64")
    arm = L.platform_tags("aarch64", glibc="2.17")
    assert arm[0] == "manylinux_2_17_aarch64" and "manylinux2014_aarch64" in arm
    assert not any(t.startswith(("manylinux1", "manylinux2010")) for t in arm)
    assert L.platform_tags("x86_64", musl="1.2") == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64"]


@pytest.mark.parametrize("kwargs, match", [
    ({"python": "3"}, "python must look like"),
    ({"python": "3.11", "glibc": None}, "exactly one of glibc"),
    ({"arch": "sparc"}, "unknown arch"),
    ({"requirements": ["paddle paddle"]}, "invalid requirement"),
    ({"requirements": []}, "no requirements"),
    ({"indexes": [("a", "index", "https://u:secret@mirror.example/simple")]}, "carries credentials"),
    ({"indexes": [("a", "index", "https://m.example/simple?token=abc")]}, "carries credentials"),
    ({"indexes": [("a", "mirror", "https://m.example/simple")]}, "kind must be"),
    ({"indexes": [("a", "index", "https://m/simple"), ("a", "find-links", "https://m/x.html")]}, "given twice"),
])
def test_bad_requests_are_user_errors(kwargs, match):
    args = {"requirements": ["x==1"], **kwargs}
    with pytest.raises(UserInputError, match=match) as exc:
        L.LockRequest(**args)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


def test_redact_url():
    assert L.redact_url("https://user:pa55@mirror.corp/simple/x/") == "https://***@mirror.corp/simple/x/"
    assert L.redact_url("https://token@h/x.whl#sha256=ab") == "https://***@h/x.whl"
    assert L.redact_url("https://h/x.whl?X-Amz-Signature=s3cr3t&v=1") == "https://h/x.whl?X-Amz-Signature=***&v=1"
    assert L.redact_url("https://h/x.whl?access_token=t0k") == "https://h/x.whl?access_token=***"
    assert L.redact_url("file:///opt/wheels/a.whl") == "file:///opt/wheels/a.whl"
    assert "s3cr3t" not in L.redact_text("ERROR: 404 for https://u:s3cr3t@h/x.whl and more")


def test_inputs_digest_ignores_order_and_spacing_but_not_the_target():
    a = L.LockRequest(["b==1", "a == 2"], python="3.11")
    b = L.LockRequest(["a==2", "b==1"], python="3.11", cell_id="other")
    assert L.inputs_digest(a) == L.inputs_digest(b)
    assert L.inputs_digest(a) != L.inputs_digest(L.LockRequest(["a==2", "b==1"], python="3.12"))
    assert L.inputs_digest(a) != L.inputs_digest(L.LockRequest(["a==2", "b==1"], glibc="2.28"))
    assert L.inputs_digest(a) != L.inputs_digest(L.LockRequest(["a==2", "b==1"], extra_tools=["t==1"]))


def test_marker_env_is_the_targets():
    env = L.marker_env("3.10", "aarch64")
    assert env["python_version"] == "3.10" and env["python_full_version"] == "3.10.0"
    assert env["platform_machine"] == "aarch64" and env["sys_platform"] == "linux"
    assert L.marker_env("3.11.2", "x86_64")["python_full_version"] == "3.11.2"


# --- resolution with the real pip ----------------------------------------------------------------


def test_resolve_write_read_roundtrip(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "app", "1.0", ["lib>=1", "extra-only; extra == 'fast'"]),
                 make_wheel(w, "lib", "1.5", ["leaf"]), make_wheel(w, "lib", "0.9"),
                 make_wheel(w, "leaf", "2.0"), make_wheel(w, "tool", "0.33"))
    req = L.LockRequest(["app==1.0"], python="3.11", glibc="2.36", extra_tools=["tool==0.33"],
                        cell_id="app-1.0-py3.11")
    lk = L.resolve(req)
    assert [w.pin for w in lk.wheels] == ["app==1.0", "leaf==2.0", "lib==1.5"]
    assert {w.key: w.via for w in lk.wheels} == {"app": (), "lib": ("app",), "leaf": ("lib",)}
    assert [w.pin for w in lk.tools] == ["tool==0.33"]
    files = host.path / "files"
    assert {w.filename: w.sha256 for w in lk.all_wheels()} == {
        p.name: sha256(p) for p in files.glob("*.whl") if not p.name.startswith("lib-0.9")}
    assert L.lock_matches(lk, req)

    path = tmp_path / "locks" / "app.txt"
    L.write_lock(lk, path)
    text = path.read_text()
    assert "--hash=sha256:" + lk.wheels[0].sha256 in text and "regenerate: imagegen lock --variant app-1.0-py3.11" in text
    assert "#tool tool==0.33 \\" in text and "\ntool==0.33" not in text
    assert L.read_lock(path) == lk
    L.write_lock(L.read_lock(path), path)
    assert path.read_text() == text  # deterministic: no timestamps, sorted
    assert not list(path.parent.glob(".*tmp"))


def test_lock_file_is_read_by_pip_require_hashes(host, tmp_path):
    """The lock file itself is a valid --require-hashes requirements file (tools excluded)."""
    w = tmp_path / "w"
    host.publish(make_wheel(w, "app", "1.0", ["lib"]), make_wheel(w, "lib", "1.0"), make_wheel(w, "tool", "1"))
    lk = L.resolve(L.LockRequest(["app==1.0"], extra_tools=["tool==1"]))
    path = tmp_path / "lock.txt"
    L.write_lock(lk, path)
    proc = L.run_pip(["download", "--no-index", "--no-deps", "--require-hashes", "--find-links",
                      str(host.path / "files"), "-d", str(tmp_path / "dl"), "-r", str(path)], env=L.pip_env())
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["app-1.0-py3-none-any.whl",
                                                                  "lib-1.0-py3-none-any.whl"]


def test_markers_are_evaluated_for_the_target_python_not_the_host(host, tmp_path):
    """pip evaluates markers with the host interpreter; the lock must follow the target's."""
    w = tmp_path / "w"
    host.publish(make_wheel(w, "app", "1.0", ['backport>=1; python_version < "3.11"',
                                              'newdep; python_version >= "3.12"',
                                              'x86only; platform_machine == "x86_64"']),
                 make_wheel(w, "backport", "1.2"), make_wheel(w, "newdep", "3.0"), make_wheel(w, "x86only", "1.0"))
    old = L.resolve(L.LockRequest(["app==1.0"], python="3.10"))
    assert [x.pin for x in old.wheels] == ["app==1.0", "backport==1.2", "x86only==1.0"]
    new = L.resolve(L.LockRequest(["app==1.0"], python="3.12", arch="aarch64", glibc="2.28"))
    assert [x.pin for x in new.wheels] == ["app==1.0", "newdep==3.0"]
    assert dict((x.key, x.via) for x in new.wheels)["newdep"] == ("app",)


def test_requirement_markers_are_evaluated_for_the_target(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "a", "1.0"), make_wheel(w, "b", "1.0"))
    lk = L.resolve(L.LockRequest(["a==1.0", 'b==1.0; python_version >= "3.13"'], python="3.12"))
    assert [x.pin for x in lk.wheels] == ["a==1.0"]


def test_target_python_and_platform_select_the_wheel(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "fast", "1.0", tag="cp311-cp311-manylinux_2_28_x86_64"),
                 make_wheel(w, "fast", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64"),
                 make_wheel(w, "fast", "1.0", tag="cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64"))
    assert L.resolve(L.LockRequest(["fast==1.0"], python="3.11")).wheels[0].filename.endswith("2_28_x86_64.whl")
    assert "cp312" in L.resolve(L.LockRequest(["fast==1.0"], python="3.12")).wheels[0].filename
    arm = L.resolve(L.LockRequest(["fast==1.0"], python="3.11", arch="aarch64", glibc="2.17")).wheels[0]
    assert arm.filename.endswith("aarch64.whl")
    with pytest.raises(L.MissingWheel, match=r"no wheel of fast==1.0 for CPython 3.11 on manylinux_2_27_x86_64") \
            as exc:
        L.resolve(L.LockRequest(["fast==1.0"], python="3.11", glibc="2.27", cell_id="fast-old-glibc"))
    assert exc.value.exit_code == 2 and str(exc.value).startswith("fast-old-glibc: ")


def test_missing_wheel_for_target_python_names_package_python_platform(host, tmp_path):
    host.publish(make_wheel(tmp_path / "w", "paddlepaddle", "2.6.2", tag="cp311-cp311-manylinux1_x86_64"))
    with pytest.raises(L.MissingWheel) as exc:
        L.resolve(L.LockRequest(["paddlepaddle==2.6.2"], python="3.14", cell_id="paddle-py3.14"))
    msg = str(exc.value)
    assert "paddlepaddle==2.6.2" in msg and "CPython 3.14" in msg and "manylinux_2_36_x86_64" in msg
    assert host.index.as_uri() in msg and "\n" not in msg


def test_requires_python_is_checked_against_the_target(host, tmp_path):
    host.publish(make_wheel(tmp_path / "w", "modern", "2.0", requires_python=">=3.12"))
    with pytest.raises(L.MissingWheel, match="modern"):
        L.resolve(L.LockRequest(["modern==2.0"], python="3.11"))
    assert L.resolve(L.LockRequest(["modern==2.0"], python="3.12")).wheels[0].pin == "modern==2.0"


def test_conflict_is_a_user_error(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "a", "1.0", ["c<2"]), make_wheel(w, "b", "1.0", ["c>=2"]),
                 make_wheel(w, "c", "1.0"), make_wheel(w, "c", "2.0"))
    with pytest.raises(UserInputError, match="conflict") as exc:
        L.resolve(L.LockRequest(["a==1.0", "b==1.0"]))
    assert "\n" not in str(exc.value)


def test_extra_find_links_without_hashes_are_hashed(host, tmp_path, http_server):
    """A find-links page without #sha256 fragments (Paddle's legacy page): the lock still has sha256."""
    links = tmp_path / "links"
    local = make_wheel(links, "localpkg", "1.0")
    remote_dir = tmp_path / "remote"
    remote = make_wheel(remote_dir, "remotepkg", "1.0")
    (remote_dir / "stable.html").write_text(f'<a href="{remote.name}">{remote.name}</a>\n')
    base = http_server(remote_dir)
    req = L.LockRequest(["localpkg==1.0", "remotepkg==1.0"],
                        indexes=[("local", "find-links", str(links)),
                                 ("legacy", "find-links", f"{base}/stable.html")])
    lk = L.resolve(req)
    assert {w.key: w.sha256 for w in lk.wheels} == {"localpkg": sha256(local), "remotepkg": sha256(remote)}
    assert {w.key: w.url for w in lk.wheels}["remotepkg"] == f"{base}/{remote.name}"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_extra_index_fails_fast_naming_it(host, tmp_path):
    host.publish(make_wheel(tmp_path / "w", "torchlike", "2.0"))
    url = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    req = L.LockRequest(["torchlike==2.0"], indexes=[("vendor-cu126", "index", url)], cell_id="c1")
    started = time.monotonic()
    with pytest.raises(L.IndexUnreachable) as exc:
        L.resolve(req)
    assert time.monotonic() - started < 10
    msg = str(exc.value)
    assert "'vendor-cu126'" in msg and url in msg and "connection refused" in msg
    assert "--skip-unreachable-index vendor-cu126" in msg and exc.value.exit_code == 1


def test_silent_index_times_out_quickly(host, tmp_path):
    """An index that accepts connections but never answers (a black hole) costs the probe timeout only."""
    host.publish(make_wheel(tmp_path / "w", "torchlike", "2.0"))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/simple/"
        started = time.monotonic()
        with pytest.raises(L.IndexUnreachable, match=r"no answer within 2s"):
            L.resolve(L.LockRequest(["torchlike==2.0"], indexes=[("blackhole", "index", url)]))
        assert time.monotonic() - started < 10
    finally:
        srv.close()


def test_unreachable_index_skipped_on_request_or_for_local_label_pins(host, tmp_path, monkeypatch):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "plain", "2.0"), make_wheel(w, "torchlike", "2.0+cpu"))
    url = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    # a local version label names the build: the same file from the host configuration is the same build
    lk = L.resolve(L.LockRequest(["torchlike==2.0+cpu"], indexes=[("pytorch-cpu", "index", url)]))
    assert lk.wheels[0].pin == "torchlike==2.0+cpu" and lk.skipped_indexes == ("pytorch-cpu",)
    assert "(unreachable at lock time: skipped)" in L.lock_text(lk)
    # a plain pin could be another build: only on request
    req = L.LockRequest(["plain==2.0"], indexes=[("vendor", "index", url)])
    with pytest.raises(L.IndexUnreachable):
        L.resolve(req)
    assert L.resolve(req, skip_unreachable=["vendor"]).skipped_indexes == ("vendor",)
    monkeypatch.setenv("IMAGEGEN_SKIP_UNREACHABLE_INDEXES", "other,vendor")
    assert L.resolve(req).wheels[0].pin == "plain==2.0"


def test_reachable_extra_index_is_used(host, tmp_path, http_server):
    extra_root = tmp_path / "vendor"
    make_index(extra_root, [make_wheel(tmp_path / "w", "vendoronly", "1.0")])
    base = http_server(extra_root)
    lk = L.resolve(L.LockRequest(["vendoronly==1.0"], indexes=[("vendor", "index", f"{base}/simple/")]))
    assert lk.wheels[0].url.startswith(base) and not lk.skipped_indexes


def test_read_lock_rejects_garbage_with_line_number(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("# meta: {\"format\": 1}\nnumpy>=1\n")
    with pytest.raises(UserInputError, match=r"x.txt:2: not an imagegen lock line"):
        L.read_lock(p)
    p.write_text("numpy==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(UserInputError, match="incomplete entry|not an imagegen lock"):
        L.read_lock(p)
    with pytest.raises(UserInputError, match="cannot read lock file"):
        L.read_lock(tmp_path / "missing.txt")


def test_write_lock_refuses_missing_hash(tmp_path):
    lk = L.Lock(cell_id="c", python="3.11", arch="x86_64", glibc="2.36", musl=None, indexes=(),
                requirements=("a==1",), extra_tools=(), inputs="sha256:0",
                wheels=(L.LockedWheel("a", "1", "", "a-1-py3-none-any.whl", "file:///a"),))
    with pytest.raises(ImagegenError, match="no sha256 for a==1"):
        L.write_lock(lk, tmp_path / "c.txt")
    assert not (tmp_path / "c.txt").exists()


def test_lock_cells_shares_downloads_and_is_all_or_nothing(host, tmp_path):
    from imagegen import wheelhouse

    w = tmp_path / "w"
    host.publish(make_wheel(w, "common", "1.0", payload=b"#" * 10000), make_wheel(w, "one", "1.0", ["common"]),
                 make_wheel(w, "two", "1.0", ["common"]))
    out = tmp_path / "locks"
    reqs = {"one": L.LockRequest(["one==1.0"]), "two": L.LockRequest(["two==1.0"])}
    res = L.lock_cells(reqs, out, jobs=2)
    assert sorted((r.cell_id, r.status) for r in res) == [("one", "locked"), ("two", "locked")]
    assert len(list(wheelhouse.cache_entries())) == 3  # common once
    first = {p.name: p.read_text() for p in out.iterdir()}

    # second run: locks match their requests, nothing is resolved (the index may even be gone)
    (host.index / "one" / "index.html").unlink()
    res = L.lock_cells(reqs, out, jobs=2)
    assert {r.status for r in res} == {"up-to-date"}
    assert {p.name: p.read_text() for p in out.iterdir()} == first

    # a failing cell: no lock file is written or changed, also not the good cell's
    bad = {"two": L.LockRequest(["two==1.0", "common==1.0"]), "three": L.LockRequest(["nonexistent==1"])}
    with pytest.raises(L.MissingWheel, match=r"^three: .*no lock written"):
        L.lock_cells(bad, out, jobs=2)
    assert {p.name: p.read_text() for p in out.iterdir()} == first


def test_lock_status(host, tmp_path):
    host.publish(make_wheel(tmp_path / "w", "a", "1.0"))
    req = L.LockRequest(["a==1.0"])
    path = tmp_path / "a.txt"
    assert L.lock_status(req, path) == "missing"
    L.write_lock(L.resolve(req), path)
    assert L.lock_status(req, path) == "up-to-date"
    assert L.lock_status(L.LockRequest(["a==1.0"], python="3.12"), path) == "stale"


# --- the commands (imagegen.cli.lock_cmds) ----------------------------------------------------------


@pytest.fixture
def cells() -> dict:
    """{cell id: (LockRequest, lock path)}: what `lock` works on, in place of a matrix's cells."""
    return {}


@pytest.fixture
def cli_app(tmp_path, monkeypatch, cells):
    from imagegen.cli import lock_cmds

    app = typer.Typer()

    @app.command("lock")
    def lock(all_: Annotated[bool, typer.Option("--all")] = False,
             check: Annotated[bool, typer.Option("--check")] = False,
             json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
        # `imagegen lock` selects cells from the matrix, then run_lock does the rest: its seam
        lock_cmds.run_lock(cells, check=check, json_out=json_out)

    app.command("fetch")(lock_cmds.fetch_command)
    app.command("prune")(lock_cmds.prune_command)
    monkeypatch.chdir(tmp_path)
    return app


def test_lock_command_check_fetch_prune(host, tmp_path, cli_app, cells, monkeypatch):
    import io

    from typer.testing import CliRunner

    from imagegen import console, wheelhouse

    w = tmp_path / "w"
    host.publish(make_wheel(w, "a", "1.0", ["b"]), make_wheel(w, "b", "1.0"))
    reqs = {"a-cell": L.LockRequest(["a==1.0"])}
    cells.update({cid: (r, tmp_path / "locks" / f"{cid}.txt") for cid, r in reqs.items()})
    runner = CliRunner()

    def run(*args: str) -> str:
        buf = io.StringIO()
        monkeypatch.setattr(console.out, "file", buf)  # results go to imagegen.console.out
        res = runner.invoke(cli_app, list(args), catch_exceptions=False)
        assert res.exit_code == 0
        return buf.getvalue()

    with pytest.raises(ImagegenError, match="1 lock file"):
        run("lock", "--check")
    first = run("lock", "--all")
    assert first.startswith("locked") and "(2 wheels" in first
    assert '"up-to-date"' in run("lock", "--check", "--json")
    assert run("lock", "--all").startswith("up-to-date")
    for f in wheelhouse.wheels_root().rglob("*.whl"):
        f.unlink()
    assert run("fetch", str(tmp_path / "locks")).startswith("2 wheels for 1 lock(s)")
    assert "would remove 0 wheel(s)" in run("prune", "--dry-run", "locks")
