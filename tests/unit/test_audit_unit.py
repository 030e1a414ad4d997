"""imagegen audit on synthetic `docker save` tarballs with exactly known contents (no engine)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zlib

import pytest

from imagegen.audit import audit, check_gates, compare
from imagegen.audit.categories import category_of
from imagegen.audit.report import category_bytes, display_path
from imagegen.audit.synth import pattern, write_save_tar
from imagegen.audit.trace import parse_trace
from imagegen.elf import ElfProbe
from imagegen.errors import ImagegenError, UserInputError
from imagegen.savestream.gzsize import GzipCounter
from imagegen.units import parse_size

pytestmark = pytest.mark.unit

MB10 = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def debug_so(tmp_path_factory) -> bytes:
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("so")
    (d / "t.c").write_text("#include <stdio.h>\nint helper(int x){return x*3;}\nint api(int a){printf(\"%d\\n\","
                           "helper(a));return 0;}\n")
    subprocess.run(["gcc", "-g", "-O0", "-shared", "-fPIC", "-o", str(d / "libdbg.so"), str(d / "t.c")], check=True)
    return (d / "libdbg.so").read_bytes()


def _sections(data: bytes, tmp_path) -> dict[str, int]:
    p = tmp_path / "x.so"
    p.write_bytes(data)
    out = subprocess.run(["readelf", "-S", "-W", str(p)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        if "]" in line and "[" in line:
            parts = line.split("]", 1)[1].split()
            if len(parts) >= 5 and parts[0] != "Name":
                sizes[parts[0]] = int(parts[4], 16)
    return sizes


RECORD_CUBLAS = ("nvidia/__init__.py,sha256=x,0\nnvidia/cublas/__init__.py,,\nnvidia/cublas/lib/libcublas.so.11,,\n"
                 "nvidia_cublas_cu11-11.11.3.6.dist-info/RECORD,,\n")
RECORD_CUDNN = ("nvidia/__init__.py,sha256=x,0\nnvidia/cudnn/lib/libcudnn.so.8,,\nnvidia/cudnn/lib/libcudnn_cnn_train.so.8,,\n"
                "nvidia/cudnn/include/cudnn.h,,\n\"nvidia/cudnn/odd,name.txt\",,\n"
                "nvidia_cudnn_cu11-8.6.0.163.dist-info/RECORD,,\n")
SITE = "/usr/local/lib/python3.11/site-packages"
DPKG_STATUS = ("Package: libfoo1\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.2-3\n"
               "Description: foo\n multi-line\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n")


@pytest.fixture(scope="module")
def ground(tmp_path_factory, debug_so) -> tuple[str, dict]:
    """A 3-layer image whose every number is known."""
    d = tmp_path_factory.mktemp("img")
    cublas = b"B" * 3000
    cudnn_a = b"C" * 5000
    cudnn_train = b"T" * 7000
    layers = [
        [  # layer 0: base
            ("symlink", "/lib", "usr/lib"),
            ("file", "/usr/lib/x86_64-linux-gnu/libfoo.so.1", b"F" * 2048),
            ("file", "/usr/share/doc/libfoo1/changelog.Debian.gz", b"D" * 1500),
            ("file", "/usr/share/man/man1/foo.1.gz", b"M" * 500),
            ("file", "/var/lib/dpkg/status", DPKG_STATUS.encode()),
            ("file", "/var/lib/dpkg/info/libfoo1:amd64.list",
             b"/.\n/lib\n/lib/x86_64-linux-gnu/libfoo.so.1\n/usr/share/doc/libfoo1/changelog.Debian.gz\n"),
            ("file", "/etc/config", b"old" * 100),
            ("dir", "/opt/stale"),
            ("file", "/opt/stale/a", b"s" * 111),
            ("file", "/opt/stale/b", b"s" * 222),
        ],
        [  # layer 1: the big temporary file, a pip tree in the nvidia namespace, a debug .so, duplicates
            ("file", "/tmp/big.bin", pattern(7, MB10, random=True), MB10),
            ("file", f"{SITE}/nvidia/__init__.py", b""),
            ("file", f"{SITE}/nvidia/cublas/__init__.py", b"# c\n"),
            ("file", f"{SITE}/nvidia/cublas/lib/libcublas.so.11", cublas),
            ("file", f"{SITE}/nvidia_cublas_cu11-11.11.3.6.dist-info/RECORD", RECORD_CUBLAS.encode()),
            ("file", f"{SITE}/nvidia/cudnn/lib/libcudnn.so.8", cudnn_a),
            ("file", f"{SITE}/nvidia/cudnn/lib/libcudnn_cnn_train.so.8", cudnn_train),
            ("file", f"{SITE}/nvidia/cudnn/include/cudnn.h", b"h" * 400),
            ("file", f"{SITE}/nvidia/cudnn/odd,name.txt", b"o" * 10),
            ("file", f"{SITE}/nvidia_cudnn_cu11-8.6.0.163.dist-info/RECORD", RECORD_CUDNN.encode()),
            ("file", f"{SITE}/nvidia/stray.txt", b"x" * 77),   # in the namespace dir, in no RECORD
            ("file", "/usr/local/cuda/lib64/libcublas.so.11", cublas),  # duplicate of the wheel's copy
            ("file", "/opt/app/libdbg.so", debug_so),
            ("file", f"{SITE}/pkg/__pycache__/m.cpython-311.pyc", b"p" * 900),
            ("file", f"{SITE}/pkg/tests/test_m.py", b"t" * 300),
            ("file", "/usr/include/foo.h", b"i" * 250),
            ("file", "/usr/lib/x86_64-linux-gnu/libfoo.a", b"a" * 4000),
            ("file", "/root/.cache/pip/http/x", b"c" * 600),
            ("file", "/odd\nname\udcff.bin", b"z" * 5),
            ("symlink", "/loop/a", "b"),
            ("symlink", "/loop/b", "/loop/a"),
            ("hardlink", "/opt/app/libdbg-link.so", "/opt/app/libdbg.so"),
        ],
        [  # layer 2: delete the big file, overwrite the config, opaque /opt/stale
            ("whiteout", "/tmp/big.bin"),
            ("file", "/etc/config", b"new"),
            ("opaque", "/opt/stale"),
            ("dir", "/opt/stale"),
            ("file", "/opt/stale/c", b"n" * 3),
        ],
    ]
    path = str(d / "ground.tar")
    with open(path, "wb") as f:
        write_save_tar(f, layers, tag="imagegen-test/audit-ground:latest",
                       history=["ADD base", "RUN install things", "RUN cleanup"])
    return path, {"cublas": cublas, "cudnn": cudnn_a, "cudnn_train": cudnn_train, "so": debug_so}


@pytest.fixture(scope="module")
def ground_report(ground):
    return audit(tarball=ground[0]).report


def test_the_report_is_its_schema(ground_report):
    """Every key and type of a real report is in imagegen.audit.schema (schemas/audit.schema.json)."""
    from pydantic import TypeAdapter

    from imagegen.audit.schema import AuditReport

    TypeAdapter(AuditReport).validate_python(ground_report, strict=True)


def test_deleted_big_file_is_exact_waste(ground_report):
    w = ground_report["waste"]
    assert w["deleted"] == MB10 + 111 + 222
    assert w["overwritten"] == 300
    assert w["top_hidden"][0] == {"path": "/tmp/big.bin", "bytes": MB10, "added_in": 1, "hidden_by": 2,
                                  "reason": "deleted"}
    layers = ground_report["layers"]
    assert layers[2]["deletes"] == MB10 + 111 + 222 and layers[2]["overwrites"] == 300
    assert layers[1]["hidden_later"] == MB10 and layers[0]["hidden_later"] == 300 + 333
    assert [L["created_by"] for L in layers] == ["ADD base", "RUN install things", "RUN cleanup"]


def test_totals_and_categories_add_up(ground_report):
    t = ground_report["totals"]
    assert t["layers"] == t["visible"] + t["hidden"]
    assert sum(c["bytes"] for c in ground_report["categories"]) == t["visible"]
    assert sum(L["size"] for L in ground_report["layers"]) == t["layers"]
    assert sum(L["visible"] for L in ground_report["layers"]) == t["visible"]
    assert t["wasted"] == t["hidden"] + t["duplicates"]
    assert sum(p["bytes"] for p in ground_report["packages"]) + ground_report["unowned"]["bytes"] == t["visible"]


def test_duplicates_found_by_hash(ground_report, ground):
    w = ground_report["waste"]
    g = [g for g in w["duplicate_groups"] if "/usr/local/cuda/lib64/libcublas.so.11" in g["paths"]]
    assert g and g[0]["copies"] == 2 and g[0]["wasted"] == len(ground[1]["cublas"])
    assert sorted(g[0]["paths"]) == sorted([f"{SITE}/nvidia/cublas/lib/libcublas.so.11",
                                            "/usr/local/cuda/lib64/libcublas.so.11"])


def test_known_categories(ground_report, ground, tmp_path):
    cats = {c["name"]: c["bytes"] for c in ground_report["categories"]}
    assert cats["docs"] == 1500 and cats["man"] == 500
    assert category_bytes(ground_report, "docs") == 2000
    assert cats["bytecode"] == 900
    assert cats["tests"] == 300
    assert cats["headers"] == 400 + 250
    assert cats["static_libs"] == 4000
    assert cats["cache:pip"] == 600
    assert cats["cuda:cublas"] == 3000 * 2 + 4  # + nvidia/cublas/__init__.py
    assert cats["cuda:cudnn"] == 5000 + 7000 + 10  # + nvidia/cudnn/odd,name.txt
    sec = _sections(ground[1]["so"], tmp_path)
    debug = sum(v for k, v in sec.items() if k.startswith(".debug"))
    assert debug > 0 and cats["debug"] == debug
    assert ground_report["elf"]["strippable"] == debug + sec[".symtab"] + sec[".strtab"]
    sugg = {s["rule"]: s["bytes"] for s in ground_report["suggestions"] if s["rule"]}
    assert sugg["docs"] == 2000 and sugg["cudnn_train"] == 7000 and sugg["caches"] == 600
    assert sugg["strip"] == ground_report["elf"]["strippable"]


def test_pip_namespace_charged_per_file(ground_report):
    pk = {p["key"]: p for p in ground_report["packages"]}
    cublas = pk["pip:nvidia-cublas-cu11"]
    cudnn = pk["pip:nvidia-cudnn-cu11"]
    rec_cublas = len(RECORD_CUBLAS.encode())
    rec_cudnn = len(RECORD_CUDNN.encode())
    assert cublas["version"] == "11.11.3.6"
    assert cublas["bytes"] == 0 + 4 + 3000 + rec_cublas      # nvidia/__init__.py claimed first by cublas
    assert cudnn["bytes"] == 5000 + 7000 + 400 + 10 + rec_cudnn
    unowned = {f["path"] for f in ground_report["unowned"]["top_files"]}
    assert f"{SITE}/nvidia/stray.txt" in unowned
    assert ground_report["ownership_conflicts"] == 1          # the shared nvidia/__init__.py


def test_dpkg_through_merged_usr(ground_report):
    pk = {p["key"]: p for p in ground_report["packages"]}
    assert "deb:gone" not in pk
    assert pk["deb:libfoo1"]["bytes"] == 2048 + 1500 and pk["deb:libfoo1"]["version"] == "1.2-3"


def test_opaque_and_odd_names_and_loops(ground_report, ground):
    index = audit(tarball=ground[0]).view.index
    assert "/opt/stale/c" in index and "/opt/stale/a" not in index and "/opt/stale/b" not in index
    assert "/odd\nname\udcff.bin" in index
    assert "/odd\\nname\\xff.bin" in [f["path"] for f in ground_report["unowned"]["top_files"]] + [
        f["path"] for f in audit(tarball=ground[0], top=100).report["top_files"]]
    assert {lp["path"] for lp in ground_report["symlink_loops"]} == {"/loop/a", "/loop/b"}
    assert any("symlink" in p for p in ground_report["problems"])


def test_compressed_size_is_gzip_of_layer(ground):
    import hashlib
    import tarfile

    rep = audit(tarball=ground[0]).report
    with tarfile.open(ground[0]) as tf:
        man = json.load(tf.extractfile("manifest.json"))[0]
        for i, name in enumerate(man["Layers"]):
            data = tf.extractfile(name).read()
            serial = zlib.compressobj(6, zlib.DEFLATED, 31)
            n = len(serial.compress(data) + serial.flush())
            got = rep["layers"][i]["compressed"]
            assert abs(got - n) <= 64 + n // 10_000, (i, got, n)  # pigz-style blocks: < 0.01 %
            assert rep["layers"][i]["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_gzip_counter_output_is_one_valid_gzip_stream():
    data = b"".join(pattern(3, 700_000)()) + b"".join(pattern(4, 300_000, random=True)())
    c = GzipCounter(block=64 << 10, keep_output=True)
    for i in range(0, len(data), 50_000):
        c.feed(memoryview(data)[i:i + 50_000])
    size = c.finish()
    blob = c.gzip_bytes(zlib.crc32(data))
    assert len(blob) == size
    assert gzip.decompress(blob) == data
    serial = len(gzip.compress(data, 6))
    assert abs(size - serial) / serial < 0.01


def test_elf_probe_spools_when_section_headers_are_not_at_the_end(debug_so, monkeypatch):
    import imagegen.elf as elf

    want = ElfProbe(len(debug_so))
    want.feed(memoryview(debug_so))
    ref = want.result()
    monkeypatch.setattr(elf, "TAIL", 64)   # force the section headers outside the kept tail
    monkeypatch.setattr(elf, "HEAD", 64)
    for step in (10, 1000, 50_000):   # pieces smaller and larger than the kept head
        p = elf.ElfProbe(len(debug_so))
        for i in range(0, len(debug_so), step):
            p.feed(memoryview(debug_so)[i:i + step])
        assert p._spool is not None
        got = p.result()
        assert got == ref and got.debug > 0


def test_fatbin_section_is_cuda_kernels(tmp_path, debug_so):
    if not shutil.which("objcopy"):
        pytest.skip("objcopy not installed")
    blob = tmp_path / "fat.bin"
    blob.write_bytes(os.urandom(12345))
    src = tmp_path / "in.so"
    src.write_bytes(debug_so)
    subprocess.run(["objcopy", "--add-section", f".nv_fatbin={blob}", str(src), str(tmp_path / "libphi.so")],
                   check=True)
    data = (tmp_path / "libphi.so").read_bytes()
    path = str(tmp_path / "fat.tar")
    with open(path, "wb") as f:
        write_save_tar(f, [[("file", f"{SITE}/paddle/libs/libphi.so", data)]])
    rep = audit(tarball=path).report
    cats = {c["name"]: c["bytes"] for c in rep["categories"]}
    assert cats["cuda_kernels"] == 12345
    assert cats["framework:paddle"] + cats["cuda_kernels"] + cats["debug"] == len(data)


def test_truncated_and_corrupt_streams(ground, tmp_path):
    raw = open(ground[0], "rb").read()
    for cut in (100, 600, 5000, len(raw) // 2, raw.rindex(b'"Layers"')):
        p = tmp_path / f"cut{cut}.tar"
        p.write_bytes(raw[:cut])
        with pytest.raises(ImagegenError, match="truncated|corrupt|manifest"):
            audit(tarball=str(p))
    bad = bytearray(raw)
    bad[512 + 2000] ^= 0xFF  # a byte inside the first layer's data
    p = tmp_path / "flip.tar"
    p.write_bytes(bytes(bad))
    with pytest.raises(ImagegenError, match="corrupt"):
        audit(tarball=str(p))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ImagegenError, match="corrupt"):
        audit(tarball=str(junk))
    with pytest.raises(UserInputError):
        audit(tarball=str(tmp_path / "missing.tar"))


def test_parse_size():
    assert parse_size("800MB") == 800_000_000
    assert parse_size("4.5GB") == 4_500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("123") == 123
    with pytest.raises(UserInputError):
        parse_size("lots")


def test_display_path():
    assert display_path("/a/b") == "/a/b"
    assert display_path("/a\nb") == "/a\\nb"
    assert display_path("/caf\udce9") == "/caf\\xe9"
    assert display_path("/café") == "/café"


def test_category_rules():
    assert category_of("/usr/lib/python3/dist-packages/torch/lib/libtorch_cuda.so") == "framework:torch"
    assert category_of("/venv/lib/python3.11/site-packages/nvidia/cufft/lib/libcufft.so.10") == "cuda:cufft"
    assert category_of("/venv/lib/python3.11/site-packages/nvidia/cudnn/include/cudnn.h") == "headers"
    assert category_of("/var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease") == "cache:apt"
    assert category_of("/usr/lib/python3.11/test/test_os.py") == "tests"
    assert category_of("/usr/share/locale/de/LC_MESSAGES/x.mo") == "locales"
    # kept on purpose (licence compliance; UTF-8): no slimming rule, so the audit never suggests dropping them
    assert category_of("/usr/share/doc/libc6/copyright") == "licenses"
    assert category_of("/usr/share/doc/libc6/changelog.Debian.gz") == "docs"
    assert category_of("/usr/lib/locale/C.utf8/LC_CTYPE") == "locale:c_utf8"
    assert category_of("/usr/lib/locale/de_DE.utf8/LC_CTYPE") == "locales"


def test_gates(ground_report):
    assert check_gates(ground_report) == []
    r = check_gates(ground_report, max_size=parse_size("1MB"), max_wasted=parse_size("1MB"),
                    max_cats={"docs": 1999, "cuda": 10**9})
    assert len(r) == 3 and "docs" in r[2] and "2000 B" in r[2]


def test_compare(ground_report, tmp_path):
    p = tmp_path / "small.tar"
    with open(p, "wb") as f:
        write_save_tar(f, [[("file", "/usr/share/doc/x", b"d" * 100)]])
    b = audit(tarball=str(p)).report
    c = compare(ground_report, b)
    docs = next(r for r in c["categories"] if r["name"] == "docs")
    assert docs == {"name": "docs", "a": 1500, "b": 100, "diff": -1400}
    vis = next(r for r in c["totals"] if r["name"] == "visible")
    assert vis["diff"] == b["totals"]["visible"] - ground_report["totals"]["visible"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "imagegen", "audit", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_cli_json_html_and_gate_exit(ground, tmp_path):
    html = tmp_path / "r.html"
    r = _cli("--from-tar", ground[0], "--json", "--html", str(html))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["totals"]["hidden"] == MB10 + 111 + 222 + 300
    page = html.read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert 'id="treemap"' in page and "audit-data" in page
    r = _cli("--from-tar", ground[0], "--max-size", "1MB", "--max", "docs=1kB", "--max-wasted", "20GB")
    assert r.returncode == 1
    assert "gate failed: image size" in r.stderr and "gate failed: category docs" in r.stderr
    assert "wasted" not in r.stderr.split("gate failed")[-1]
    assert "Categories" in r.stdout
    r = _cli("--from-tar", ground[0], "--max", "nonsense=1")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown category") and len(r.stderr.splitlines()) == 1


def test_trace_parser():
    text = "\n".join([
        '12 execve("/usr/bin/python3", ["python3"], 0x7ff /* 5 vars */) = 0',
        '12 openat(AT_FDCWD</>, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>',
        '12 openat(AT_FDCWD</work>, "x.py", O_RDONLY) = 4</work/x.py>',
        '12 openat(AT_FDCWD</>, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory)',
        '13 openat(AT_FDCWD</>, "/a\\303\\251", O_RDONLY <unfinished ...>',
        '13 <... openat resumed>) = 5</caf\\303\\251>',
        '14 execve("/bin/missing", ["x"], 0x1 /* 1 var */) = -1 ENOENT (No such file or directory)',
    ])
    opened, execs = parse_trace(text)
    assert opened == {"/etc/ld.so.cache", "/work/x.py", "/café"}
    assert execs == {"/usr/bin/python3"}


def test_bytecode_rule_tradeoff_from_the_benchmark(tmp_path, monkeypatch):
    """The bytecode rule's bytes against its cold-start seconds: from bench/coldstart.py's results,
    found by the image's io.imagegen.cell label; "not measured" without them."""
    from imagegen import coldstart

    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(coldstart, "repo_path", lambda: tmp_path / "none.json")
    path = tmp_path / "img.tar"
    pyc = f"{SITE}/pkg/__pycache__/mod.cpython-311.pyc"
    with open(path, "wb") as f:
        write_save_tar(f, [[("file", pyc, b"P" * 4000)]], labels={"io.imagegen.cell": "pkg:1.0-cpu-slim"})
    rep = audit(tarball=str(path)).report
    assert rep["bytecode_rule"]["bytes"] == 4000 and rep["bytecode_rule"]["measured"] == "not measured"
    assert "not measured" in next(s["text"] for s in rep["suggestions"] if s["rule"] == "bytecode")
    coldstart.save([{"cell": "pkg:1.0-cpu-slim", "measured_at": "2026-11-29T23:00:00Z", "runs": 5,
                     "bytecode_rule": {"bytes": 3900, "import_s": 4.1, "first_inference_s": 4.4}}],
                   tmp_path / "results.json")
    rep = audit(tarball=str(path)).report
    t = rep["bytecode_rule"]
    assert t["cold_start_s"] == {"import": 4.1, "first_inference": 4.4} and t["bytes"] == 4000
    assert "+4.10 s to `import`" in t["text"] and "median of 5 runs" in t["text"]
