"""The builder's install script (imagegen/scripts/install.py), run for real against a host venv."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from imagegen.scripts import install

SCRIPT = Path(__file__).resolve().parents[2] / "imagegen" / "scripts" / "install.py"


def make_wheel(directory: Path, name: str = "tinypkg", version: str = "1.0") -> Path:
    whl = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return whl


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def wheels(tmp_path):
    d = tmp_path / "wheels"
    d.mkdir()
    whl = make_wheel(d)
    (d / "requirements.lock").write_text(f"tinypkg==1.0 --hash=sha256:{sha(whl)}\n")
    return d


def test_installs_offline_with_hashes_into_a_pipless_venv(tmp_path, wheels):
    venv = tmp_path / "venv"
    subprocess.check_call([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    subprocess.check_call([sys.executable, str(SCRIPT), "--venv", str(venv), "--wheels", str(wheels)])
    out = subprocess.check_output([str(venv / "bin" / "python"), "-c", "import tinypkg; print(tinypkg.VALUE)"])
    assert out.strip() == b"42"


def test_hash_mismatch_fails(tmp_path, wheels):
    (wheels / "requirements.lock").write_text("tinypkg==1.0 --hash=sha256:" + "0" * 64 + "\n")
    venv = tmp_path / "venv"
    subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv), "--wheels", str(wheels)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "hash" in (proc.stdout + proc.stderr).lower()


def test_tool_wheel_with_a_wrong_hash_is_refused(tmp_path, wheels):
    fake_uv = make_wheel(wheels, "uv", "0.0.1")
    (wheels / "tools.lock").write_text("uv==0.0.1 --hash=sha256:" + "1" * 64 + "\n")
    assert fake_uv.exists()
    venv = tmp_path / "venv"
    subprocess.check_call([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv), "--wheels", str(wheels)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "does not match its hash" in proc.stderr + proc.stdout


@pytest.mark.parametrize("stderr, expected", [
    # uv 0.13 on a corrupt wheel: the first error and its last cause
    ("Resolved 9 packages in 11ms\nerror: Failed to download `flatbuffers==25.12.19`\n"
     "  cause: Failed to extract archive: flatbuffers-25.12.19-py2.py3-none-any.whl\n"
     "  cause: deflate decompression error: repeated call with bad state\n",
     "Failed to download `flatbuffers==25.12.19` (deflate decompression error: repeated call with bad state)"),
    # pip's --require-hashes refusal names the wheel
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"
     "    onnx==1.17.0 from file:///tmp/wheels/onnx-1.17.0-cp311-cp311-manylinux_2_17_x86_64.whl:\n"
     "        Expected sha256 aaaa\n             Got        bbbb\n",
     "hash mismatch for onnx-1.17.0-cp311-cp311-manylinux_2_17_x86_64.whl"),
    ("ERROR: No matching distribution found for numpy==9.9\n", "No matching distribution found for numpy==9.9"),
    ("", "exit code 1"),
])
def test_install_failure_reason_is_one_line_naming_the_cause(stderr, expected):
    reason = install.failure_reason(stderr, 1)
    assert "\n" not in reason
    assert reason.startswith(expected), reason
