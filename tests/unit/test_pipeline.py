"""The build's own logic (imagegen.pipeline, imagegen.build): the inputs digest and its one recipe,
the skip decision and its stamps, the interrupt bookkeeping. Pure logic: real matrix cells, real
renders, real files and processes; no engine (where one is needed, the test points DOCKER_HOST at a
socket that does not exist, so the engine really is unreachable)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagegen import build, buildkit, engine, hostpip, matrix, paths, pipeline, recipe, render

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def m():
    return matrix.load(ROOT / "matrix.yaml")


@pytest.fixture(scope="module")
def cell(m):
    (c,) = m.select(["paddle:3.3.1-cpu-slim"])
    return c


@pytest.fixture(scope="module")
def rendered(m, cell):
    return render.render_cell(m, cell)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- the inputs digest ---------------------------------------------------------------------------


def test_inputs_digest_is_the_documented_recipe():
    parts = {"b": b"\x00\x01", "a": "text"}
    h = hashlib.sha256()
    for key, data in (("a", b"text"), ("b", b"\x00\x01")):  # sorted by name, each value by its sha256
        h.update(key.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    assert pipeline.inputs_digest(parts) == "sha256:" + h.hexdigest()  # images' labels stay valid


def test_inputs_digest_order_free_and_sensitive_to_every_name_and_value():
    base = {"Dockerfile": "FROM x\n", "base:builder": "sha256:1", "lock": b"a==1\n"}
    d = pipeline.inputs_digest(base)
    assert pipeline.inputs_digest(dict(reversed(list(base.items())))) == d
    assert pipeline.inputs_digest({**base, "lock": "a==1\n"}) == d  # str and bytes of the same text
    for key in base:
        assert pipeline.inputs_digest({**base, key: "changed"}) != d
        renamed = {(k + "x" if k == key else k): v for k, v in base.items()}
        assert pipeline.inputs_digest(renamed) != d
    assert pipeline.inputs_digest({**base, "extra": ""}) != d


def test_build_inputs_lists_every_input_once(rendered):
    ids = {"builder": "sha256:b", "runtime": "sha256:r"}
    parts = pipeline.build_inputs(rendered, ids, **{"imagegen/closure.txt": "libgomp1\n"})
    assert set(rendered.files) <= set(parts)  # Dockerfile, imagegen/prune.json
    assert set(recipe.context_files()) <= set(parts)  # the scripts every context carries
    assert parts["base:builder"] == "sha256:b" and parts["base:runtime"] == "sha256:r"
    assert parts["imagegen/closure.txt"] == "libgomp1\n"
    for rel, src in recipe.context_files().items():
        assert parts[rel] == src.read_bytes()


def test_quick_key_follows_lock_bases_and_rendered_files(rendered):
    ids = {"builder": "sha256:b", "runtime": "sha256:r"}
    key = pipeline.quick_key(rendered, ids, b"a==1\n")
    assert key == pipeline.quick_key(rendered, dict(ids), b"a==1\n")
    assert pipeline.quick_key(rendered, ids, b"a==2\n") != key
    assert pipeline.quick_key(rendered, {**ids, "runtime": "missing"}, b"a==1\n") != key
    changed = render.Rendered(rendered.cell, {**rendered.files, "Dockerfile": rendered.files["Dockerfile"] + "#\n"})
    assert pipeline.quick_key(changed, ids, b"a==1\n") != key
    # the quick key and the full digest are different fingerprints of the same list
    assert key != pipeline.inputs_digest(pipeline.build_inputs(rendered, ids))


def test_quick_key_follows_the_committed_kernel_label(rendered, m, tmp_path):
    """New kernel facts (or coverage rules) change a GPU image's io.imagegen.cuda.archs without
    changing its lock: the quick key changes with them, so the build does not skip the relabel
    (issue 13: the ONNX Runtime GPU cell, built with an empty label)."""
    ids = {"builder": "sha256:b", "runtime": "sha256:r"}
    key = pipeline.quick_key(rendered, ids, b"a==1\n")
    assert pipeline.quick_key(rendered, ids, b"a==1\n", "") == key          # CPU cells keep their keys
    assert pipeline.quick_key(rendered, ids, b"a==1\n", "sm_75") != key
    assert pipeline.quick_key(rendered, ids, b"a==1\n", "sm_75") != pipeline.quick_key(rendered, ids, b"a==1\n", "sm_80")
    (ort,) = m.select(["onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-slim"])
    lock = ROOT / "locks" / f"{ort.id}.txt"
    assert pipeline.committed_label(ort, lock).startswith("sm_60,sm_61,sm_70,")
    assert pipeline.committed_label(ort, tmp_path / lock.name) == ""          # no facts next to it
    assert pipeline.committed_label(m.select(["paddle:3.3.1-cpu-slim"])[0], lock) == ""


# --- the skip decision ---------------------------------------------------------------------------


def test_up_to_date_only_when_the_tag_holds_the_same_digest():
    assert pipeline.up_to_date("sha256:a", "sha256:a")
    assert not pipeline.up_to_date("sha256:a", "sha256:a", force=True)
    assert not pipeline.up_to_date("sha256:a", "sha256:b")
    assert not pipeline.up_to_date("sha256:a", None)  # no image, or one without the label
    assert not pipeline.up_to_date(None, None)  # no stamp: never skip on nothing


def test_stamps_map_a_quick_key_to_the_digest_it_built(cache, cell):
    assert pipeline.stamped_digest(cell, "sha256:q") is None  # nothing stamped yet
    pipeline.write_stamp(cell, "sha256:q", "sha256:d")
    assert pipeline.stamp_path(cell).parent == paths.stamps_dir() and str(cache) in str(pipeline.stamp_path(cell))
    assert pipeline.stamped_digest(cell, "sha256:q") == "sha256:d"
    assert pipeline.stamped_digest(cell, "sha256:other") is None  # an input changed since
    pipeline.stamp_path(cell).write_text("{not json")
    assert pipeline.stamped_digest(cell, "sha256:q") is None
    pipeline.stamp_path(cell).write_text("[1, 2]")
    assert pipeline.stamped_digest(cell, "sha256:q") is None


def test_lock_of_a_cell_sits_beside_the_matrix_and_carries_the_builder_tools(m, cell):
    from imagegen import compat

    assert pipeline.lock_path(m, cell) == ROOT / "locks" / f"{cell.id}.txt"
    req = pipeline.lock_request(cell)
    assert req.cell_id == cell.id and req.python == cell.python
    assert tuple(req.extra_tools) == compat.build_tools()
    assert req.regenerate == f"imagegen lock --variant {cell.ref}"
    assert pipeline.lock_requests(m, [cell]) == {cell.id: (req, pipeline.lock_path(m, cell))}


# --- the cache root -------------------------------------------------------------------------------


def test_cache_root_empty_variable_means_unset(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE", "")
    assert paths.cache_root() == Path.home() / ".cache" / "imagegen"  # not the working directory
    monkeypatch.delenv("IMAGEGEN_CACHE")
    assert paths.cache_root() == Path.home() / ".cache" / "imagegen"
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "c"))
    assert paths.cache_root() == tmp_path / "c"
    assert paths.build_log("x") == tmp_path / "c" / "logs" / "x.log"
    assert paths.wheels_root() == tmp_path / "c" / "wheels" / "sha256"


# --- interrupt bookkeeping -----------------------------------------------------------------------


def test_tracker_snapshots_are_copies_and_threads_can_share_it():
    t = build.Tracker()
    t.add("containers", "c1")
    snap = t.snapshot()
    t.add("containers", "c2")
    t.discard("containers", "c1")
    t.discard("images", "never-added")  # discarding what is not there is fine
    assert snap["containers"] == {"c1"} and t.snapshot()["containers"] == {"c2"}

    def work(n: int) -> None:
        for i in range(200):
            t.add("images", f"{n}-{i}")
            if i % 2:
                t.discard("images", f"{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(t.snapshot()["images"]) == 8 * 100


@pytest.fixture
def no_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    engine.client.cache_clear()
    yield
    engine.client.cache_clear()


def test_abort_cleanup_removes_contexts_and_stops_pips_even_without_an_engine(tmp_path, monkeypatch, no_engine):
    t = build.Tracker()
    ctx = tmp_path / "imagegen-ctx-1"
    (ctx / "cell" / "wheels").mkdir(parents=True)
    (ctx / "cell" / "Dockerfile").write_text("FROM x\n")
    t.add("workdirs", str(ctx))
    t.add("containers", "0123456789ab")  # unreachable engine: nothing to remove, no error
    t.add("images", "sha256:" + "0" * 64)
    # a "buildx" in flight, in its own session as buildkit.run starts it: cancelled (SIGINT to its group)
    buildx = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    t.add("buildx", buildkit.tracker_value(buildx.pid, "sha256:" + "1" * 64, time.time()))
    # a "pip" that would run for a minute, started the way the lock stage starts pips
    monkeypatch.setenv("IMAGEGEN_PIP", "sleep")
    done: list = []
    runner = threading.Thread(target=lambda: done.append(hostpip.run_pip(["60"], env={"PATH": "/usr/bin:/bin"})))
    runner.start()
    deadline = time.monotonic() + 10
    while not hostpip.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hostpip.running(), "the pip never started"
    started = time.monotonic()
    pipeline.abort_cleanup(t)
    runner.join(timeout=10)
    assert not runner.is_alive() and time.monotonic() - started < 10
    assert done and done[0].returncode != 0  # terminated, not finished
    assert not ctx.exists()
    assert buildx.poll() is not None, "the buildx process still runs"
