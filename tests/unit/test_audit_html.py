"""The --html page renders its treemap in headless Chromium (no network), with a screenshot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from imagegen.audit import audit
from imagegen.audit.html import write
from imagegen.audit.synth import pattern, write_save_tar

pytestmark = [pytest.mark.unit, pytest.mark.browser]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def _run(exe: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="imagegen-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=120)


def test_treemap_renders(tmp_path):
    exe = _chromium()
    layers = [[("file", f"/usr/lib/python3.11/site-packages/pkg{i}/mod{j}.py", b"x" * (1000 * (i + 1) * (j + 1)))
               for i in range(6) for j in range(5)]
              + [("file", "/usr/share/doc/a/README", b"d" * 50_000), ("file", "/tmp/big", pattern(1, 400_000), 400_000)],
              [("whiteout", "/tmp/big")]]
    tar = tmp_path / "img.tar"
    with open(tar, "wb") as f:
        write_save_tar(f, layers)
    html = tmp_path / "report.html"
    write(audit(tarball=str(tar)), str(html))
    text = html.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "page must not load anything remote"

    dom = _run(exe, "--dump-dom", html.as_uri())
    assert dom.returncode == 0, dom.stderr[-500:]
    m = re.search(rb'id="treemap" data-rendered="(\d+)"', dom.stdout)
    assert m and int(m.group(1)) >= 5, dom.stdout[:500]
    assert b"tm-cell" in dom.stdout and b"(hidden by later layers)" in dom.stdout

    shot = tmp_path / "shot.png"
    r = _run(exe, f"--screenshot={shot}", html.as_uri())
    assert r.returncode == 0 and shot.exists()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000   # a blank page compresses to ~2-5 kB
    keep = os.environ.get("IMAGEGEN_AUDIT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
