"""Owned work directories (imagegen.flock.make_owned_dir / reap) with real processes: a directory
whose owner was SIGKILLed is reaped by the next creation of its kind, one a live process holds is
never reaped, and lock-less ones (older imagegen versions) only when a day old."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegen import flock

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "imagegen-ctx-"

# A child that creates an owned dir, puts 2 MB in it (plus a hard link to a file outside it, which
# frees nothing), reports the path and waits to be killed.
OWNER = """
import os, sys, time
from pathlib import Path
from imagegen import flock
parent, prefix, outside = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
d = flock.make_owned_dir(parent, prefix)
(d / "wheels").mkdir()
(d / "wheels" / "big.bin").write_bytes(b"x" * 2_000_000)
os.link(outside, d / "wheels" / "linked.whl")
print(d, flush=True)
time.sleep(600)
"""

# A child that creates (and removes) one dir of the kind, printing the reaper's log on stderr.
CREATOR = """
import sys
from pathlib import Path
from imagegen import flock
with flock.owned_dir(Path(sys.argv[1]), sys.argv[2]) as d:
    print(d, flush=True)
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                NO_COLOR="1", COLUMNS="400")


def _start_owner(parent: Path, outside: Path, prefix: str = PREFIX) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(parent), prefix, str(outside)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout
    line = proc.stdout.readline().strip()
    assert line, f"the owner child died: rc {proc.wait()}"
    return proc, Path(line)


def _create(parent: Path, prefix: str = PREFIX) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-c", CREATOR, str(parent), prefix], capture_output=True, text=True,
                         env=_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture
def outside(tmp_path) -> Path:
    f = tmp_path / "cache-wheel.whl"
    f.write_bytes(b"w" * 500_000)
    return f


def test_sigkilled_owner_is_reaped_by_the_next_creation(tmp_path, outside):
    parent = tmp_path / "cache"
    proc, d = _start_owner(parent, outside)
    try:
        assert d.is_dir() and d.name.startswith(f"{PREFIX}{proc.pid}-") and (d / flock.LOCK_NAME).exists()
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup can run
        proc.wait()
    assert d.is_dir(), "SIGKILL left the directory behind (the case this guards)"
    res = _create(parent)
    assert not d.exists()
    assert (f"reaped {d}: 2.00 MB freed, 500.0 kB more hard-linked elsewhere (kept) (its imagegen process is gone)"
            in res.stderr)  # the hard-linked wheel freed nothing and is not counted
    assert outside.read_bytes() == b"w" * 500_000  # the file outside, linked into it, is intact
    assert sorted(parent.iterdir()) == []  # the creator removed its own on exit


def test_live_holder_is_never_reaped(tmp_path, outside):
    parent = tmp_path / "cache"
    proc, d = _start_owner(parent, outside)
    try:
        res = _create(parent)
        assert "reaped" not in res.stderr
        assert flock.reap(parent, PREFIX) == [] and flock.reap(parent, PREFIX, stale_after=0) == []
        with flock.owned_dir(parent, PREFIX) as mine:
            assert mine != d and (d / "wheels" / "big.bin").stat().st_size == 2_000_000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p for p, _ in flock.reap(parent, PREFIX)] == [d]


def test_other_kinds_and_names_are_left_alone(tmp_path, outside):
    parent = tmp_path / "tmp"
    proc, d = _start_owner(parent, outside, prefix="imagegen-base-")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _create(parent, "imagegen-test-")
    assert d.exists()  # another kind: reaped by its own kind's creation, not this one
    _create(parent, "imagegen-base-")
    assert not d.exists()


def _lockless(parent: Path, name: str, age_s: float) -> Path:
    d = parent / name
    (d / "sub").mkdir(parents=True)
    (d / "ctx.tar").write_bytes(b"c" * 1000)
    t = time.time() - age_s
    for p in (d / "sub", d / "ctx.tar", d):
        os.utime(p, (t, t))
    return d


def test_lockless_dirs_are_reaped_only_when_a_day_old(tmp_path):
    parent = tmp_path / "cache"
    old = _lockless(parent, f"{PREFIX}a1b2c3d4", 2 * 86400)  # made by tempfile.mkdtemp in an older version
    fresh = _lockless(parent, f"{PREFIX}e5f6g7h8", 60)  # could be a live older build
    staging = _lockless(parent, f".new-{PREFIX}k2", 5)  # killed between mkdir and flock, or live
    other = _lockless(parent, "imagegen-ctxfoo", 2 * 86400)  # not this prefix
    res = _create(parent)
    assert not old.exists() and fresh.exists() and staging.exists() and other.exists()
    assert f"reaped {old}: 1.00 kB freed (no owner lock, unchanged for 48 h)" in res.stderr


def test_readonly_tree_of_a_killed_owner_is_removed(tmp_path, outside):
    parent = tmp_path / "tmp"
    proc, d = _start_owner(parent, outside, prefix="imagegen-base-")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ro = d / "rootfs" / "usr"
    ro.mkdir(parents=True)
    (ro / "f").write_text("x")
    ro.chmod(0o555)
    (d / "rootfs").chmod(0o555)
    reaped = flock.reap(parent, "imagegen-base-")
    assert [p for p, _ in reaped] == [d] and not d.exists()


def test_image_test_workdir_reaps_killed_ones(tmp_path):
    from imagegen.imagetest.container import make_workdir, remove_workdir

    code = ("import sys, time; from pathlib import Path; from imagegen.imagetest.container import make_workdir;"
            "print(make_workdir(Path(sys.argv[1])), flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout
    left = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (left / "probes").is_dir()
    d = make_workdir(tmp_path)
    try:
        assert not left.exists() and (d / "probes").is_dir()
    finally:
        remove_workdir(d)
    assert list(tmp_path.iterdir()) == []


def test_cache_prune_reaps_work_dirs_of_killed_processes(tmp_path, outside):
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    ctx_proc, ctx = _start_owner(cache, outside)  # a build context
    base_proc, base = _start_owner(tmp, outside, prefix="imagegen-base-")  # a base bootstrap
    live_proc, live = _start_owner(tmp, outside, prefix="imagegen-test-")  # a running image test
    try:
        for p in (ctx_proc, base_proc):
            p.send_signal(signal.SIGKILL)
            p.wait()
        env = dict(_env(), IMAGEGEN_CACHE=str(cache), IMAGEGEN_TMPDIR=str(tmp))

        def prune(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "imagegen", "cache", "prune", str(ROOT / "locks"), *extra],
                                  capture_output=True, text=True, env=env, timeout=120)

        dry = prune("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would remove 2 work dir(s) of imagegen processes that are gone, 4.00 MB" in dry.stdout
        assert ctx.exists() and base.exists()
        res = prune()
        assert res.returncode == 0, res.stderr
        assert "removed 2 work dir(s) of imagegen processes that are gone, 4.00 MB" in res.stdout
        assert f"reaped {ctx}: 2.00 MB freed" in res.stderr and f"reaped {base}: 2.00 MB freed" in res.stderr
        assert not ctx.exists() and not base.exists() and live.exists()
    finally:
        live_proc.send_signal(signal.SIGKILL)
        live_proc.wait()


def test_a_child_given_the_lock_keeps_the_dir_owned_after_its_parent_is_killed(tmp_path):
    """bases.run_mmdebstrap passes the lock to mmdebstrap (its own session, so it outlives a SIGKILLed
    imagegen): the directory it still works in is not reaped until it exits."""
    parent = tmp_path / "tmp"
    code = ("import subprocess, sys, time; from pathlib import Path; from imagegen import flock;"
            "d = flock.make_owned_dir(Path(sys.argv[1]), 'imagegen-base-');"
            "p = subprocess.Popen(['sleep', '600'], start_new_session=True, pass_fds=flock.holder_fds(d));"
            "print(d, p.pid, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(parent)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout
    d, child = proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert flock.reap(parent, "imagegen-base-") == [] and Path(d).is_dir()
    finally:
        os.kill(int(child), signal.SIGKILL)
    deadline = time.monotonic() + 10
    reaped = flock.reap(parent, "imagegen-base-")
    while not reaped and time.monotonic() < deadline:  # the kill is delivered asynchronously
        time.sleep(0.05)
        reaped = flock.reap(parent, "imagegen-base-")
    assert [p for p, _ in reaped] == [Path(d)]
