"""The content-addressed wheel cache and build-context staging, with the host's real pip against
hand-made wheels (local file:// index, loopback HTTP servers). Helpers and fixtures: test_lock.py."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import functools
import http.server
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imagegen import lock as L
from imagegen import wheelhouse as W
from imagegen.errors import ImagegenError


def _load_helpers():
    """test_lock.py's wheel/index builders and fixtures (tests run with --import-mode=importlib, so a
    sibling test module is loaded by path rather than imported by name)."""
    spec = importlib.util.spec_from_file_location("_imagegen_lock_test_helpers", Path(__file__).with_name("test_lock.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _load_helpers()
_Quiet, make_index, make_wheel, sha256 = _helpers._Quiet, _helpers.make_index, _helpers.make_wheel, _helpers.sha256
host, http_server = _helpers.host, _helpers.http_server  # fixtures


def _lock(requirements, **kw) -> L.Lock:
    return L.resolve(L.LockRequest(requirements, **kw))


def _cas_files() -> list[Path]:
    return sorted(W.wheels_root().rglob("*.whl")) if W.wheels_root().exists() else []


def _tmp_leftovers() -> list[Path]:
    tmp = W.cache_root() / "tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


class _Counting(_Quiet):
    hits: list[str] = []

    def do_GET(self):
        type(self).hits.append(self.path)
        return super().do_GET()


@pytest.fixture
def counting_server(http_server):
    def start(directory: Path):
        handler_cls = type("H", (_Counting,), {"hits": []})
        base = http_server(directory, functools.partial(handler_cls, directory=str(directory)))
        return base, handler_cls.hits

    return start


def test_fetch_is_content_addressed_and_once_per_machine(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "app", "1.0", ["lib"]), make_wheel(w, "lib", "1.0"))
    lk = _lock(["app==1.0"])
    paths = W.fetch(lk)
    assert [p.name for p in paths] == ["app-1.0-py3-none-any.whl", "lib-1.0-py3-none-any.whl"]
    for wheel, p in zip(lk.wheels, paths, strict=True):
        assert p == W.wheels_root() / wheel.sha256[:2] / wheel.sha256 / wheel.filename
        assert sha256(p) == wheel.sha256 and not os.access(p, os.W_OK) or os.geteuid() == 0
        assert (p.stat().st_mode & 0o222) == 0
    mtimes = [p.stat().st_mtime_ns for p in paths]
    for f in (host.path / "files").iterdir():  # the sources are gone: the cache answers
        f.unlink()
    assert W.fetch(lk) == paths and [p.stat().st_mtime_ns for p in paths] == mtimes
    assert _tmp_leftovers() == []


def test_shared_wheels_are_downloaded_once_over_http(host, tmp_path, counting_server):
    vendor = tmp_path / "vendor"
    wd = tmp_path / "w"
    make_index(vendor, [make_wheel(wd, "common", "1.0", payload=b"x" * 50000),
                        make_wheel(wd, "one", "1.0", ["common"]), make_wheel(wd, "two", "1.0", ["common"])])
    base, hits = counting_server(vendor)
    ix = [("vendor", "index", f"{base}/simple/")]
    locks = [_lock(["one==1.0"], indexes=ix), _lock(["two==1.0"], indexes=ix)]
    hits.clear()
    W.fetch_many(locks, jobs=4)
    wheel_gets = sorted(h for h in hits if h.endswith(".whl"))
    assert wheel_gets == ["/files/common-1.0-py3-none-any.whl", "/files/one-1.0-py3-none-any.whl",
                          "/files/two-1.0-py3-none-any.whl"]
    hits.clear()
    W.fetch_many(locks, jobs=4)
    assert hits == []  # second run downloads nothing


def test_hash_mismatch_names_package_and_both_hashes_and_keeps_nothing(host, tmp_path, http_server):
    vendor = tmp_path / "vendor"
    make_index(vendor, [make_wheel(tmp_path / "w", "pkg", "1.0")])
    base = http_server(vendor)
    lk = _lock(["pkg==1.0"], indexes=[("vendor", "index", f"{base}/simple/")])
    good = lk.wheels[0]
    wrong = "0" * 64
    for bad in (dataclasses.replace(good, sha256=wrong),  # over HTTP, through pip
                dataclasses.replace(good, sha256=wrong, url=(vendor / "files" / good.filename).as_uri())):  # local
        bad_lock = dataclasses.replace(lk, wheels=(bad,))
        with pytest.raises(W.HashMismatch) as exc:
            W.fetch(bad_lock)
        msg = str(exc.value)
        assert "pkg==1.0" in msg and f"expected sha256 {wrong}" in msg and f"got {good.sha256}" in msg
        assert "\n" not in msg and exc.value.exit_code == 1
        assert _cas_files() == [] and _tmp_leftovers() == []


def test_a_changed_cache_file_is_detected_and_replaced(host, tmp_path):
    host.publish(make_wheel(tmp_path / "w", "pkg", "1.0"))
    lk = _lock(["pkg==1.0"])
    (p,) = W.fetch(lk)
    p.chmod(0o644)
    with open(p, "ab") as fh:
        fh.write(b"tampered")
    assert W.cached(lk.wheels[0]) is None and not p.exists()
    (again,) = W.fetch(lk)
    assert again == p and sha256(p) == lk.wheels[0].sha256


def test_download_failure_names_package_and_index(host, tmp_path, http_server):
    vendor = tmp_path / "vendor"
    make_index(vendor, [make_wheel(tmp_path / "w", "pkg", "1.0")])
    base = http_server(vendor)
    lk = _lock(["pkg==1.0"], indexes=[("vendor", "index", f"{base}/simple/")])
    (vendor / "files" / lk.wheels[0].filename).unlink()
    with pytest.raises(W.DownloadFailed) as exc:
        W.fetch(lk)
    msg = str(exc.value)
    assert msg.startswith("download of pkg==1.0 (pkg-1.0-py3-none-any.whl) failed from index 'vendor' "
                          f"({base}/simple/)")
    assert "404" in msg and "\n" not in msg
    assert _cas_files() == [] and _tmp_leftovers() == []


class _NeedsAuth(_Quiet):
    """Answers 401 unless the request carries deploy:hunter2 (as pip does from its configuration)."""

    def do_GET(self):
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"deploy:hunter2").decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.end_headers()
            return
        return super().do_GET()


def test_credentials_never_reach_the_lock_or_the_context(host, tmp_path, http_server, monkeypatch):
    """A host index with credentials: the lock has the URL redacted; fetching still works (by name and
    hash through the host's index, whose credentials stay in pip's configuration)."""
    private = tmp_path / "private"
    make_index(private, [make_wheel(tmp_path / "w", "secretpkg", "1.0")])
    base = http_server(private, functools.partial(_NeedsAuth, directory=str(private)))
    authed = base.replace("http://", "http://deploy:hunter2@") + "/simple/"
    conf = tmp_path / "pip-private.conf"
    conf.write_text(f"[global]\nindex-url = {authed}\nno-cache-dir = true\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    lk = _lock(["secretpkg==1.0"], cell_id="private")
    path = tmp_path / "private.txt"
    L.write_lock(lk, path)
    text = path.read_text()
    assert "hunter2" not in text and "deploy" not in text
    lk = L.read_lock(path)
    if "***@" in lk.wheels[0].url:
        assert L.is_redacted(lk.wheels[0].url)
    W.stage(lk, tmp_path / "ctx")
    staged = b"".join(p.read_bytes() for p in (tmp_path / "ctx").rglob("*") if p.is_file())
    assert b"hunter2" not in staged
    assert (tmp_path / "ctx" / "wheels" / "requirements.lock").read_text() == \
        f"secretpkg==1.0 --hash=sha256:{lk.wheels[0].sha256}\n"


def test_redacted_url_is_fetched_by_name_and_hash(host, tmp_path):
    host.publish(make_wheel(tmp_path / "w", "pkg", "1.0"))
    lk = _lock(["pkg==1.0"])
    w = dataclasses.replace(lk.wheels[0], url="https://***@mirror.invalid/files/pkg-1.0-py3-none-any.whl")
    (p,) = W.fetch(dataclasses.replace(lk, wheels=(w,)))
    assert sha256(p) == w.sha256


def test_hash_unhashed_downloads_once_and_caches(host, tmp_path, http_server):
    links = tmp_path / "links"
    whl = make_wheel(links, "nohash", "1.0")
    base = http_server(links)
    w = L.LockedWheel("nohash", "1.0", "", whl.name, f"{base}/{whl.name}")
    req = L.LockRequest(["nohash==1.0"])
    assert W.hash_unhashed([w], req, []) == {w.url: sha256(whl)}
    assert W.cached(dataclasses.replace(w, sha256=sha256(whl)))


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "300k"):
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("source", ["local", "http"])
def test_disk_full_is_one_line_naming_the_cache_and_keeps_nothing(host, tmp_path, http_server, small_disk,
                                                                  monkeypatch, source):
    big = make_wheel(tmp_path / "w", "big", "1.0", payload=os.urandom(600_000))
    if source == "local":
        host.publish(big)
        lk = _lock(["big==1.0"])
    else:
        vendor = tmp_path / "vendor"
        make_index(vendor, [big])
        lk = _lock(["big==1.0"], indexes=[("vendor", "index", f"{http_server(vendor)}/simple/")])
    monkeypatch.setenv("IMAGEGEN_CACHE", str(small_disk / "cache"))
    with pytest.raises(W.DiskFull) as exc:
        W.fetch(lk)
    msg = str(exc.value)
    assert msg.startswith("disk full") and str(small_disk / "cache") in msg and "\n" not in msg
    assert _cas_files() == [] and _tmp_leftovers() == []


class _Slow(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"\0" * 10_000)
                time.sleep(0.05)
        except OSError:
            pass


def test_ctrl_c_leaves_no_partial_file(host, tmp_path, http_server):
    base = http_server(tmp_path, _Slow)
    lk = L.Lock(cell_id="slow", python="3.11", arch="x86_64", glibc="2.36", musl=None, indexes=(),
                requirements=("slow==1.0",), extra_tools=(), inputs="sha256:0",
                wheels=(L.LockedWheel("slow", "1.0", "1" * 64, "slow-1.0-py3-none-any.whl",
                                      f"{base}/slow-1.0-py3-none-any.whl"),))
    path = tmp_path / "slow.txt"
    L.write_lock(lk, path)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from imagegen import lock, wheelhouse
        wheelhouse.fetch(lock.read_lock(Path({str(path)!r})))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until pip is writing the partial download
        if any(p.is_file() and p.stat().st_size > 0 for p in (W.cache_root() / "tmp").rglob("*")
               if p.name not in (".lock",) and not p.name.endswith(".req")):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the download never started")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in stderr
    assert _cas_files() == []
    assert _tmp_leftovers() == []


def test_dead_runs_are_cleaned_live_runs_kept(host):
    tmp = W.cache_root() / "tmp"
    dead, live = tmp / "run-1-dead", tmp / "run-2-live"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "partial.whl").write_bytes(b"x")
    with open(live / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (dead / ".lock").touch()
        with W.run_dir() as mine:
            assert mine.exists()
        assert not dead.exists() and live.exists()


def test_stage_hardlinks_writes_locks_and_pip_installs_offline(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "app", "1.0", ["lib"]), make_wheel(w, "lib", "1.0"), make_wheel(w, "tool", "0.1"),
                 make_wheel(w, "other", "1.0"))
    lk = _lock(["app==1.0"], extra_tools=["tool==0.1"])
    ctx = tmp_path / "ctx"
    (ctx / "wheels").mkdir(parents=True)
    (ctx / "wheels" / "stale-0-py3-none-any.whl").write_text("old")
    wheels = W.stage(lk, ctx)
    assert sorted(p.name for p in wheels.iterdir()) == [
        "app-1.0-py3-none-any.whl", "lib-1.0-py3-none-any.whl", "requirements.lock", "tool-0.1-py3-none-any.whl",
        "tools.lock"]
    for x in lk.all_wheels():
        assert (wheels / x.filename).stat().st_ino == W.cas_path(x.sha256, x.filename).stat().st_ino
    assert (wheels / "requirements.lock").read_text() == "".join(
        f"{x.pin} --hash=sha256:{x.sha256}\n" for x in lk.wheels)
    assert (wheels / "tools.lock").read_text() == f"tool==0.1 --hash=sha256:{lk.tools[0].sha256}\n"
    assert not list(ctx.glob(".wheels*"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    proc = subprocess.run(
        [*L.pip_command(), "--python", str(venv / "bin" / "python"), "install", "--no-index", "--no-deps",
         "--require-hashes", "--find-links", str(wheels), "-r", str(wheels / "requirements.lock")],
        capture_output=True, text=True, env=env)
    if "no such option: --python" in proc.stderr:
        pytest.skip("pip too old for --python")
    assert proc.returncode == 0, proc.stderr
    code = "import app, lib, importlib.util as u; print(app.VERSION, u.find_spec('tool') is None)"
    assert subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["1.0", "True"]

    # restaging another lock leaves exactly its files
    W.stage(_lock(["other==1.0"]), ctx)
    assert sorted(p.name for p in wheels.iterdir()) == ["other-1.0-py3-none-any.whl", "requirements.lock"]


def test_prune_keeps_what_locks_reference(host, tmp_path):
    w = tmp_path / "w"
    host.publish(make_wheel(w, "a", "1.0"), make_wheel(w, "b", "1.0"))
    la, lb = _lock(["a==1.0"]), _lock(["b==1.0"])
    W.fetch_many([la, lb])
    assert W.prune([la], dry_run=True)[0] == 1 and len(_cas_files()) == 2
    files, size = W.prune([la])
    assert files == 1 and size > 0 and [p.name for p in _cas_files()] == ["a-1.0-py3-none-any.whl"]


def test_errors_are_imagegen_errors():
    assert issubclass(W.HashMismatch, ImagegenError) and issubclass(W.DiskFull, ImagegenError)
    assert issubclass(W.DownloadFailed, ImagegenError)


def test_stage_copies_across_filesystems(host, tmp_path, small_disk):
    host.publish(make_wheel(tmp_path / "w", "pkg", "1.0"))
    lk = _lock(["pkg==1.0"])
    wheels = W.stage(lk, small_disk / "ctx")  # the cache is on another filesystem: copies, not links
    staged = wheels / lk.wheels[0].filename
    assert sha256(staged) == lk.wheels[0].sha256
    assert staged.stat().st_ino != W.cas_path(lk.wheels[0].sha256, lk.wheels[0].filename).stat().st_ino
