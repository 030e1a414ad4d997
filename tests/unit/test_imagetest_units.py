"""Unit tests of the image test suite's pure parts: save-stream inventory, policy rules,
targets, requirement checking, version matching, driver comparison."""

from __future__ import annotations

import io
import json
import struct
import tarfile

import pytest

from imagegen import compat
from imagegen.errors import UserInputError
from imagegen.imagetest import TestTarget, gpuhost, policy, policy_for, run_targets
from imagegen.imagetest.checks.test_policy import unmet_requirements
from imagegen.imagetest.container import _is_static_elf
from imagegen.imagetest.helpers import same_version
from imagegen.imagetest.inventory import ELF_STRIPPED, ELF_SYMTAB, elf_kind, merge_layers, scan_save_stream
from imagegen.imagetest.target import dump_targets, load_targets

pytestmark = pytest.mark.unit


def _elf(symtab: bool) -> bytes:
    """A minimal little-endian ELF64 with 2 section headers (NULL + SYMTAB or PROGBITS)."""
    body = b"\0" * 64
    shoff = 64 + len(body)
    hdr = bytearray(64)
    hdr[:4] = b"\x7fELF"
    hdr[4], hdr[5], hdr[6] = 2, 1, 1
    struct.pack_into("<HHI", hdr, 16, 3, 62, 1)
    struct.pack_into("<Q", hdr, 0x28, shoff)
    struct.pack_into("<HHHHHH", hdr, 0x34, 64, 56, 0, 64, 2, 0)
    sh_null = b"\0" * 64
    sh = bytearray(64)
    struct.pack_into("<II", sh, 0, 1, 2 if symtab else 1)
    return bytes(hdr) + body + sh_null + bytes(sh)


def _tar(entries: list[tuple[str, bytes | None, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, kind in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind.startswith("sym:"):
                ti.type, ti.linkname = tarfile.SYMTYPE, kind[4:]
                tf.addfile(ti)
            else:
                ti.size = len(data or b"")
                tf.addfile(ti, io.BytesIO(data or b""))
    return buf.getvalue()


def _save(layers: list[bytes], oci: bool = False) -> bytes:
    names = [f"blobs/sha256/{i:064x}" if oci else f"{i:064x}/layer.tar" for i in range(len(layers))]
    config = {"config": {"User": "1000"}}
    manifest = [{"Config": "config.json", "RepoTags": None, "Layers": names}]
    return _tar([(n, data, "file") for n, data in zip(names, layers, strict=True)]
                + [("config.json", json.dumps(config).encode(), "file"),
                   ("manifest.json", json.dumps(manifest).encode(), "file")])


def test_elf_kind():
    assert elf_kind(io.BytesIO(_elf(True)), len(_elf(True))) == ELF_SYMTAB
    assert elf_kind(io.BytesIO(_elf(False)), len(_elf(False))) == ELF_STRIPPED
    assert elf_kind(io.BytesIO(b"#!/bin/sh\n" + b"x" * 100), 110) is None


@pytest.mark.parametrize("oci", [False, True])
def test_scan_save_stream_merges_layers_and_whiteouts(oci):
    l1 = _tar([("usr", None, "dir"), ("usr/share/doc/x/README", b"doc", "file"),
               ("usr/share/doc/x/copyright", b"c", "file"), ("usr/lib/libfoo.so", _elf(True), "file"),
               ("bin", None, "sym:usr/bin"), ("usr/bin/dash", b"\x7fELF", "file"),
               ("usr/bin/sh", None, "sym:dash"), ("opt/old/a", b"a", "file")])
    l2 = _tar([("usr/share/doc/x/.wh.README", b"", "file"), ("opt/old/.wh..wh..opq", b"", "file"),
               ("opt/old/b", b"b", "file")])
    layers, files, config = scan_save_stream(io.BytesIO(_save([l1, l2], oci)))
    assert [layer.size for layer in layers] == [len(l1), len(l2)]
    assert all(0 < layer.gzip_size < layer.size for layer in layers)
    assert "usr/share/doc/x/README" not in files and "usr/share/doc/x/copyright" in files
    assert "opt/old/a" not in files and "opt/old/b" in files
    assert files["usr/lib/libfoo.so"][6] == ELF_SYMTAB
    assert config["config"]["User"] == "1000"
    assert policy.shells(files) == ["bin/sh"]  # bin/sh -> usr/bin/sh -> dash, reported once
    assert policy.unstripped(files) == ["usr/lib/libfoo.so"]
    assert policy.docs(files) == []


def test_merge_replaces_dir_with_file():
    merged = merge_layers([{"a": ["d", 0, 0, 0, 0, "", None], "a/x": ["f", 0, 1, 0, 0, "", None]},
                           {"a": ["f", 0, 1, 0, 0, "", None]}])
    assert merged == {"a": ["f", 0, 1, 0, 0, "", None]}


def _f(kind="f", elf=None, link=""):
    return [kind, 0o644, 1, 0, 0, link, elf]


def test_policy_rules():
    files = {
        "usr/share/doc/pkg/copyright": _f(), "usr/share/doc/pkg/changelog.gz": _f(),
        "usr/share/man/man1/ls.1.gz": _f(),
        "opt/venv/lib/python3.11/site-packages/numpy/_core/tests/test_a.py": _f(),
        "opt/venv/lib/python3.11/site-packages/numpy/testing/__init__.py": _f(),
        "opt/venv/lib/python3.11/site-packages/numpy/_core/include/numpy/x.h": _f(),
        "opt/venv/lib/python3.11/site-packages/numpy.libs/libopenblas.so": _f(elf=ELF_SYMTAB),
        "opt/venv/lib/python3.11/site-packages/paddle/libs/libphi.so": _f(elf=ELF_SYMTAB),
        "root/.cache/pip/http/ab": _f(), "var/cache/apt/pkgcache.bin": _f(), "var/lib/apt/lists/lock": _f(),
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease": _f(),
        "usr/lib/python3.11/os.py": _f(), "usr/local/lib/python3.12/os.py": _f(),
        "opt/venv/lib/python3.11/site-packages/pip/__init__.py": _f(),
    }
    assert policy.docs(files) == ["usr/share/doc/pkg/changelog.gz"]
    assert policy.man(files) == ["usr/share/man/man1/ls.1.gz"]
    assert policy.tests_dirs(files) == ["opt/venv/lib/python3.11/site-packages/numpy/_core/tests"]
    assert policy.headers(files) == ["opt/venv/lib/python3.11/site-packages/numpy/_core/include/numpy/x.h"]
    assert policy.unstripped(files) == ["opt/venv/lib/python3.11/site-packages/paddle/libs/libphi.so"]
    assert policy.pkg_caches(files) == ["root/.cache/pip/http/ab", "var/cache/apt/pkgcache.bin"]
    assert policy.apt_lists(files) == ["var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease"]
    assert len(policy.second_python(files)) == 2
    assert policy.pip(files) == ["opt/venv/lib/python3.11/site-packages/pip"]
    assert policy.docs(files, allow=["/usr/share/doc/pkg/*"]) == []
    assert "(+1 more)" in policy.describe(["a", "b"], "things", limit=1)


def test_policy_for_flavors():
    slim = policy_for("slim", {"docs": True, "tests": False})
    assert slim["no_docs"] and slim["no_man"] and not slim["no_tests_dirs"] and slim["no_shell"]
    full = policy_for("full", {})
    assert full["non_root"] and full["deps_consistent"] and not full["no_shell"] and not full["no_headers"]


def test_target_json_roundtrip_and_labels(tmp_path):
    fw = compat.frameworks()["paddle"]
    t = TestTarget(image="paddle:2.6.2-gpu", framework=fw, version="2.6.2", device="gpu", python="3.11",
                   cuda="11.8", cudnn="8.6.0", labels={"org.opencontainers.image.source": "https://x"})
    dump_targets([t], tmp_path / "t.json")
    (back,) = load_targets(tmp_path / "t.json")
    assert back == t and back.framework.name == "paddle"
    exp = t.expected_labels()
    assert exp["io.imagegen.cuda"] == "11.8" and exp["org.opencontainers.image.created"] == ""
    assert exp["org.opencontainers.image.source"] == "https://x"
    assert t.smoke_path.name == "paddle.py" and t.smoke_path.exists()


def test_from_cell_duck_typed():
    class Slim:
        def as_dict(self):
            return {"docs": True, "tests": True, "headers": True, "caches": True, "strip": True, "pip": True}

    class Cell:
        fw = compat.frameworks()["onnxruntime"]
        version, device, python, flavor, cuda, cudnn = "1.23.2", "cpu", "3.11", "slim", None, None
        budget_size, budget_compressed, ref, slimming = 10, 5, "onnxruntime:1.23.2-cpu", Slim()

    t = TestTarget.from_cell(Cell())
    assert t.image == "onnxruntime:1.23.2-cpu" and t.budget_bytes == 10 and t.rule("no_pip")


ENV = {"implementation_name": "cpython", "implementation_version": "3.11.2", "os_name": "posix",
       "platform_machine": "x86_64", "platform_release": "6", "platform_system": "Linux", "platform_version": "",
       "python_full_version": "3.11.2", "platform_python_implementation": "CPython", "python_version": "3.11",
       "sys_platform": "linux"}


def test_unmet_requirements():
    dists = [
        {"name": "paddlepaddle", "version": "3.3.1", "requires": [
            "numpy>=1.21", "protobuf>=3.20", "typing_extensions; python_version < '3.8'",
            "opt-einsum==3.3.0", "pytest; extra == 'test'"]},
        {"name": "numpy", "version": "2.4.6", "requires": []},
        {"name": "protobuf", "version": "3.19.0", "requires": []},
        {"name": "opt_einsum", "version": "3.3.0", "requires": ["numpy>=1.7"]},
    ]
    problems = unmet_requirements(dists, ENV)
    assert problems == ["paddlepaddle 3.3.1 requires protobuf>=3.20, but 3.19.0 is installed"]
    dists.append({"name": "x", "version": "1", "requires": ["missing-pkg"]})
    assert any("missing-pkg" in p and "not installed" in p for p in unmet_requirements(dists, ENV))


def test_same_version():
    assert same_version("8.6.0", "8.6") and same_version("11.8", "11.8")
    assert not same_version("11.8", "12.0") and not same_version("", "8.6") and not same_version("8.9.1", "8.6.0")


def test_driver_ok():
    assert gpuhost.driver_ok("535.104.05", "520.61.05")
    assert not gpuhost.driver_ok("515.43.04", "520.61.05")
    assert gpuhost.driver_ok("570.26", "570.26")


def test_run_targets_rejects_unknown_checks_and_empty(tmp_path):
    fw = compat.frameworks()["paddle"]
    t = TestTarget(image="x", framework=fw, version="3.3.1", device="cpu", python="3.11")
    with pytest.raises(UserInputError, match="unknown check"):
        run_targets([t], tmp_path / "j.xml", checks=["nope"])
    with pytest.raises(UserInputError):
        run_targets([], tmp_path / "j.xml")


def test_static_elf_detection(tmp_path):
    import sys

    assert not _is_static_elf(tmp_path / "missing")
    assert not _is_static_elf(__import__("pathlib").Path(sys.executable).resolve())  # dynamic
    p = tmp_path / "x"
    p.write_bytes(b"not elf")
    assert not _is_static_elf(p)


def test_smoke_scripts_exist_for_every_framework():
    for fw in compat.frameworks().values():
        assert compat.smoke_script(fw).exists(), fw.name


def test_onnx_host_prepare_builds_a_valid_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    import importlib.util

    spec = importlib.util.spec_from_file_location("smoke_ort", compat.DATA / "smoke" / "onnxruntime.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.host_prepare(str(tmp_path)) == []
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    assert (tmp_path / "expected.npy").exists()


def test_bytecode_policy_only_for_cells_built_with_compiled_bytecode():
    assert policy_for("slim", {"bytecode": "compile"})["bytecode_compiled"]
    assert not policy_for("slim", {"bytecode": "drop"})["bytecode_compiled"]
    assert not policy_for("full", {"bytecode": "keep"})["bytecode_compiled"]
    assert not TestTarget(image="x", framework=None, version="1", device="cpu", python="3.11",
                          flavor="slim").rule("bytecode_compiled")


# --- skips the image suite may and may not hide (imagegen/data/image-skips.yaml) ---------------------


def _skip_samples() -> dict[str, str]:
    """{check module: a sample of each literal pytest.skip reason in imagegen/imagetest/checks/, with
    every formatted value replaced by "x"}."""
    import ast
    from pathlib import Path

    import imagegen.imagetest.checks as checks

    out = {}
    for path in sorted(Path(checks.__file__).parent.glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "skip" and n.args
                    and isinstance(n.args[0], (ast.Constant, ast.JoinedStr))):
                a = n.args[0]
                text = a.value if isinstance(a, ast.Constant) else "".join(
                    v.value if isinstance(v, ast.Constant) else "x" for v in a.values)
                out[text] = path.stem
    return out


def test_every_skip_of_the_image_suite_is_classified():
    """A skip caused by this host (no static busybox) becomes an error; those the cell's data or the
    hardware decide stay skips. A new pytest.skip in the checks must be classified here."""
    from imagegen.imagetest.runner import CheckResult, police_skips

    expected_allowed = {
        "image has no /bin/sh and the host has no static busybox (apt-get install busybox-static)": False,
        "no size budget in the matrix": True,
        "no compressed size budget in the matrix": True,
        "rule bytecode_compiled (x): x": True,
        "rule x (x): x": True,
        "no loadable library reports a version (cudnnGetVersion) by the names probed": True,
        "x does not report the cuDNN it was built with": True,
        "label policy not enforced for this target": True,
    }
    samples = _skip_samples()
    assert set(samples) == set(expected_allowed), f"classify the image suite's skip reasons: {sorted(samples)}"
    host = gpuhost.GpuHost(None, False, "no NVIDIA GPU/driver on this host (no /proc/driver/nvidia/version, no "
                                        "nvidia-smi)").reason
    for reason, allowed in [*expected_allowed.items(), (host, True), ("no NVIDIA container runtime for the engine "
                                                                       "(runtimes: runc; install ...)", True)]:
        (r,) = police_skips([CheckResult("img", "check", "skipped", 0.1, reason)])
        assert (r.outcome == "skipped") is allowed, (reason, r.outcome)
        if not allowed:
            assert r.message.startswith("skipped for a reason no test record may hide: " + reason)


def test_an_unallowed_skip_fails_the_run_and_writes_no_record(tmp_path, monkeypatch):
    from imagegen import testrecord
    from imagegen.imagetest.runner import CheckResult, Summary, police_skips

    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    ids = {"img": ("sha256:" + "a" * 64, "paddle:3.3.1-cpu-slim", "sha256:" + "b" * 64)}
    passing = [CheckResult("img", "smoke", "passed", 1.0), CheckResult("img", "budget", "skipped", 0.0,
                                                                         "no size budget in the matrix")]
    assert Summary(police_skips(passing), exit_code=0).ok  # an allowed skip: the run passes
    hidden = [CheckResult("img", "smoke", "passed", 1.0), CheckResult(
        "img", "hardening", "skipped", 0.0, "image has no /bin/sh and the host has no static busybox "
                                            "(apt-get install busybox-static)")]
    s = Summary(police_skips(hidden), exit_code=0)
    assert not s.ok and s.failed == 1 and testrecord.record_summary(s, ids) == []
    assert not list(tmp_path.rglob("*.json"))


def test_a_check_module_skipped_at_collection_blocks_every_record(tmp_path, monkeypatch):
    """A module-level skip (no result for any image) is recorded for every image: outside the allowed
    reasons it is an error, and no image of the run gets a record."""
    from imagegen import testrecord
    from imagegen.imagetest.runner import CheckResult, Summary, police_skips

    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    ids = {"img": ("sha256:" + "a" * 64, "paddle:3.3.1-cpu-slim", "sha256:" + "b" * 64)}
    results = [CheckResult("img", "smoke", "passed", 1.0),
               CheckResult("", "checks/test_hardening.py", "skipped", 0.0, "could not import 'testinfra'")]
    s = Summary(police_skips(results), exit_code=0)
    assert not s.ok and testrecord.record_summary(s, ids) == []
