"""The image test suite against small fixture images built here: one good image, and bad images
each wrong in exactly one way. The suite must pass the good ones and fail each bad one with the
specific reason (these failing checks are what these tests assert).

GPU fixtures are honest fakes, a few KB each: a stub `paddle` package that reports version values,
and real ELF shared objects built with gcc under nvidia/*/lib (libcudnn.so.8 exports a real
cudnnGetVersion), so the dlopen probe and the version checks run for real without CUDA.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imagegen import compat
from imagegen.imagetest import TestTarget, run_targets
from imagegen.imagetest.container import static_busybox

pytestmark = pytest.mark.engine

LABEL = {"imagegen.test": "1"}
SITE = "/usr/local/lib/python3.11/dist-packages"
PY = "python3.11"

TINY_SMOKE = '''
import json, os, sys
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)


def main(mode):
    import tinyfw
    if mode == "info":
        return {"framework_version": tinyfw.__version__, "compiled_with_cuda": False, "cuda": None, "cudnn": None}
    out = tinyfw.matmul([[1.0, 2.0], [3.0, 4.0]], [[5.0], [6.0]])
    return {"ok": out == [[17.0], [39.0]], "error": None if out == [[17.0], [39.0]] else "wrong result %s" % out}


if __name__ == "__main__":
    print("IMAGEGEN-RESULT " + json.dumps(main(sys.argv[1])))
'''

TINYFW = '''
__version__ = "1.0.0"
def matmul(a, b):
    return [[sum(x * y for x, y in zip(row, col)) for col in zip(*b)] for row in a]
'''

PADDLE_STUB = '''
"""STUB for imagegen's test fixtures: reports the values of a paddle 2.6.2 CUDA {cuda} build."""
__version__ = "2.6.2"
def is_compiled_with_cuda():
    return True
class version:
    @staticmethod
    def cuda():
        return "{cuda}"
    @staticmethod
    def cudnn():
        return "{cudnn}"
'''

CUDA_LIBS = {  # unversioned name Paddle 2.6.2 dlopens -> (component dir, versioned soname)
    "libcudnn.so": ("cudnn", "libcudnn.so.8"),
    "libcublas.so": ("cublas", "libcublas.so.11"),
    "libcublasLt.so": ("cublas", "libcublasLt.so.11"),
    "libcufft.so": ("cufft", "libcufft.so.10"),
    "libcurand.so": ("curand", "libcurand.so.10"),
    "libcusolver.so": ("cusolver", "libcusolver.so.11"),
    "libcusparse.so": ("cusparse", "libcusparse.so.11"),
    "libnccl.so": ("nccl", "libnccl.so.2"),
    "libnvrtc.so": ("cuda_nvrtc", "libnvrtc.so.11.2"),
    "libcupti.so": ("cuda_cupti", "libcupti.so.11.8"),
}


def _labels(fw: str, version: str, device: str, cuda: str | None = None, cudnn: str | None = None) -> dict:
    d = {
        "org.opencontainers.image.title": fw, "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": "0" * 40, "org.opencontainers.image.source": "https://example.invalid/imagegen",
        "org.opencontainers.image.created": "2026-01-01T00:00:00Z", "io.imagegen.framework": fw,
        "io.imagegen.framework.version": version, "io.imagegen.device": device, "io.imagegen.python": "3.11",
        "io.imagegen.flavor": "slim", "io.imagegen.inputs-digest": "sha256:" + "0" * 64, **LABEL,
    }
    if cuda:
        d.update({"io.imagegen.cuda": cuda, "io.imagegen.cudnn": cudnn, "io.imagegen.cuda.archs": "sm_75,sm_86"})
    return d


def _base() -> str:
    """The distroless-like runtime base (imagegen.bases); the fixtures only COPY onto it. A failure
    to build it is a failure of these tests, never a skip (it is what every cell is built on)."""
    from imagegen import bases

    return bases.ensure_role("bookworm", "runtime")


def _build(client, ctx: Path, tag: str, dockerfile: str, labels: dict) -> str:
    (ctx / "Dockerfile").write_text(dockerfile)
    img, _ = client.images.build(path=str(ctx), tag=tag, labels=labels, rm=True, forcerm=True)
    return tag


def _cc(src: str, out: Path, soname: str) -> None:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(["gcc", "-shared", "-fPIC", "-s", f"-Wl,-soname,{soname}", "-o", str(out), str(c)], check=True)
    c.unlink()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from imagegen.engine import client

    assert shutil.which("gcc"), "gcc builds the fake CUDA libraries (scripts/setup.sh installs it)"
    assert static_busybox(), "the hardening checks need a static busybox (scripts/setup.sh installs busybox-static)"
    c = client()
    base = _base()
    root = tmp_path_factory.mktemp("imagetest-fixtures")
    built: dict[str, str] = {}

    # --- tiny CPU framework --------------------------------------------------------------
    tiny = root / "tiny"
    (tiny / "site" / "tinyfw").mkdir(parents=True)
    (tiny / "site" / "tinyfw" / "__init__.py").write_text(TINYFW)
    di = tiny / "site" / "tinyfw-1.0.0.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyfw\nVersion: 1.0.0\n")
    (di / "RECORD").write_text("")
    (tiny / "README").write_text("left-over documentation\n")
    good = f"FROM {base}\nCOPY site {SITE}\nENV HOME=/tmp\nUSER 1000:1000\n"
    built["good"] = _build(c, tiny, "imagegen-test/imagetest-good:1", good, _labels("tinyfw", "1.0.0", "cpu"))
    built["root"] = _build(c, tiny, "imagegen-test/imagetest-root:1", good.replace("USER 1000:1000\n", ""),
                           _labels("tinyfw", "1.0.0", "cpu"))
    built["docs"] = _build(c, tiny, "imagegen-test/imagetest-docs:1", good + "COPY README /usr/share/doc/tinyfw/README\n",
                           _labels("tinyfw", "1.0.0", "cpu"))

    # --- fake Paddle 2.6.2 GPU (CUDA 11.8, cuDNN 8.6.0) ------------------------------------
    gpu = root / "gpu"
    (gpu / "site" / "paddle").mkdir(parents=True)
    (gpu / "site" / "paddle" / "__init__.py").write_text(PADDLE_STUB.format(cuda="11.8", cudnn="8.6.0"))
    for unversioned, (comp, soname) in CUDA_LIBS.items():
        libdir = gpu / "site" / "nvidia" / comp / "lib"
        libdir.mkdir(parents=True, exist_ok=True)
        src = "unsigned long cudnnGetVersion(void) { return 8600; }\n" if comp == "cudnn" else f"int imagegen_fake_{comp}(void) {{ return 0; }}\n"
        _cc(src, libdir / soname, soname)
        (libdir / unversioned).symlink_to(soname)
    ld = ":".join(sorted({f"{SITE}/nvidia/{comp}/lib" for comp, _ in CUDA_LIBS.values()}))
    gpu_df = f"FROM {base}\nCOPY site {SITE}\nENV HOME=/tmp LD_LIBRARY_PATH={ld}\nUSER 1000:1000\n"
    built["gpu-good"] = _build(c, gpu, "imagegen-test/imagetest-gpu-good:1", gpu_df, _labels("paddle", "2.6.2", "gpu", "11.8", "8.6.0"))
    (gpu / "site" / "nvidia" / "cudnn" / "lib" / "libcudnn.so").unlink()
    built["gpu-nolink"] = _build(c, gpu, "imagegen-test/imagetest-gpu-nolink:1", gpu_df, _labels("paddle", "2.6.2", "gpu", "11.8", "8.6.0"))

    yield built
    for tag in built.values():
        try:
            c.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001
            pass


def _tinyfw(smoke: Path) -> compat.Framework:
    return compat.Framework.model_validate({
        "name": "tinyfw", "title": "TinyFW", "image": "tinyfw", "import_name": "tinyfw", "libc": ["glibc"],
        "test": {"smoke": "tinyfw.py"}, "versions": {"1.0.0": {"python": ["3.11"], "cpu": {"requirements": ["tinyfw==1.0.0"]}}},
    })


@pytest.fixture(scope="module")
def cpu_run(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("imagetest-cpu")
    smoke = d / "tinyfw_smoke.py"
    smoke.write_text(TINY_SMOKE)
    fw = _tinyfw(smoke)
    common = dict(framework=fw, version="1.0.0", device="cpu", python="3.11", python_exe=PY, smoke_script=str(smoke),
                  budget_bytes=200_000_000, budget_compressed_bytes=100_000_000)
    targets = [
        TestTarget(image=images["good"], name="fixture-good", **common),
        TestTarget(image=images["root"], name="fixture-root", **common),
        TestTarget(image=images["docs"], name="fixture-docs", **common),
        TestTarget(image=images["good"], name="fixture-over-budget", **{**common, "budget_bytes": 10_000_000,
                                                                          "budget_compressed_bytes": 5_000_000}),
    ]
    with pytest.MonkeyPatch.context() as mp:  # test records go to a cache of the module's own, for this run only
        mp.setenv("IMAGEGEN_CACHE", str(d / "cache"))
        return run_targets(targets, d / "junit.xml", print_summary=False)


@pytest.fixture(scope="module")
def gpu_run(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("imagetest-gpu")
    fw = compat.frameworks()["paddle"]
    common = dict(framework=fw, version="2.6.2", device="gpu", python="3.11", python_exe=PY)
    targets = [
        TestTarget(image=images["gpu-good"], name="fixture-gpu-good", cuda="11.8", cudnn="8.6.0", **common),
        TestTarget(image=images["gpu-nolink"], name="fixture-gpu-nolink", cuda="11.8", cudnn="8.6.0", **common),
        TestTarget(image=images["gpu-good"], name="fixture-gpu-claims-cuda12", cuda="12.0", cudnn="8.9.1", **common),
    ]
    # the stub paddle cannot infer: only GPU readiness, tag and the GPU-host checks
    return run_targets(targets, d / "junit.xml", checks=["gpu_ready", "tag", "smoke"], keyword="not cpu_inference",
                       print_summary=False)


def _result(summary, image, check):
    found = [r for r in summary.results if r.image == image and r.check == check]
    assert found, f"no result for {image} {check}: {[(r.image, r.check) for r in summary.results]}"
    return found[0]


def _failed(summary, image, check, *needles):
    r = _result(summary, image, check)
    assert r.outcome == "failed", (r.outcome, r.message)
    for n in needles:
        assert n in r.message, r.message
    assert r.message.startswith(image + ": "), r.message  # names the image first


def test_good_tiny_image_passes_everything(cpu_run):
    rs = [r for r in cpu_run.results if r.image == "fixture-good"]
    bad = [(r.check, r.message) for r in rs if r.outcome not in ("passed", "skipped")]
    assert not bad, bad
    passed = {r.check for r in rs if r.outcome == "passed"}
    assert {"smoke.cpu_inference", "policy.non_root", "policy.arbitrary_uid", "policy.deps_consistent",
            "policy.contents[no_shell]", "tag.framework_version", "tag.labels", "budget.size",
            "budget.compressed_size", "gpu_ready.cpu_tag_has_no_cuda"} <= passed
    assert {"hardening.capabilities_dropped", "hardening.read_only_root", "hardening.identity"} <= passed
    assert cpu_run.junit_path.exists() and b"testcase" in cpu_run.junit_path.read_bytes()


def test_root_image_fails_non_root(cpu_run):
    _failed(cpu_run, "fixture-root", "policy.non_root", "runs as root (uid 0")


def test_docs_image_fails_no_docs(cpu_run):
    _failed(cpu_run, "fixture-docs", "policy.contents[no_docs]", "/usr/share/doc/tinyfw/README")
    assert _result(cpu_run, "fixture-docs", "policy.non_root").outcome == "passed"  # wrong in one way only


def test_over_budget_fails_both_budgets(cpu_run):
    _failed(cpu_run, "fixture-over-budget", "budget.size", "over its budget of 10.0 MB")
    _failed(cpu_run, "fixture-over-budget", "budget.compressed_size", "over its budget of 5.0 MB")


def test_summary_counts(cpu_run):
    assert not cpu_run.ok and cpu_run.failed == 4
    with pytest.raises(Exception, match="4 image check"):
        cpu_run.raise_for_failures()


def test_good_fake_gpu_image_is_gpu_ready(gpu_run):
    for check in ("gpu_ready.cuda_libraries_load", "gpu_ready.compiled_with_cuda", "gpu_ready.cudnn_library_version",
                  "tag.cuda_version", "tag.cudnn_version", "tag.framework_version", "tag.labels"):
        r = _result(gpu_run, "fixture-gpu-good", check)
        assert r.outcome == "passed", (check, r.message)


def test_gpu_only_checks_skip_with_reason_without_gpu(gpu_run):
    """Without a GPU they skip, naming the NVIDIA GPU; on a GPU host they run (the stub image then
    fails them: it has no real CUDA), and must never pass."""
    from imagegen.imagetest import gpuhost

    usable = gpuhost.detect().usable
    for check in ("smoke.gpu_inference", "smoke.host_driver"):
        r = _result(gpu_run, "fixture-gpu-good", check)
        if usable:
            assert r.outcome != "skipped", (check, r.message)
        else:
            assert r.outcome == "skipped" and "NVIDIA" in r.message, (check, r.outcome, r.message)


def test_missing_cudnn_link_fails_dlopen(gpu_run):
    _failed(gpu_run, "fixture-gpu-nolink", "gpu_ready.cuda_libraries_load",
            "1 of 10 CUDA libraries", "libcudnn.so: libcudnn.so: cannot open shared object file")


def test_cuda12_tag_on_cuda118_image_fails(gpu_run):
    _failed(gpu_run, "fixture-gpu-claims-cuda12", "tag.cuda_version", "built with CUDA 11.8, the tag claims CUDA 12.0")
    _failed(gpu_run, "fixture-gpu-claims-cuda12", "tag.cudnn_version", "cuDNN 8.6.0, the tag claims cuDNN 8.9.1")
    _failed(gpu_run, "fixture-gpu-claims-cuda12", "gpu_ready.cudnn_library_version", "is 8.6.0, the tag claims 8.9.1")
    _failed(gpu_run, "fixture-gpu-claims-cuda12", "tag.labels", "io.imagegen.cuda='11.8' (expected '12.0')")


def test_hung_probe_is_killed_and_container_replaced(images, tmp_path):
    """Trap: after an abort Paddle's signal handler sleeps forever. The in-image runner kills the
    probe's process group at its timeout; the host deadline kills the container if even that hangs."""
    from imagegen.imagetest.container import TestContainer, make_workdir

    wd = make_workdir()
    (wd / "hang.py").write_text("import time\ntime.sleep(3600)\n")
    (wd / "hang.py").chmod(0o644)
    c = TestContainer(images["good"], PY, wd).start()
    try:
        hc = c._ctr.attrs["HostConfig"]
        assert hc["CapDrop"] == ["ALL"] and hc["ReadonlyRootfs"] and "no-new-privileges" in hc["SecurityOpt"]
        assert c._ctr.labels.get("imagegen.test") == "1"
        r = c.python("hang.py", timeout=30, inner_timeout=2)  # in-image timeout
        assert r.rc == 124 and "timed out" in r.stderr and r.seconds < 20
        first = c.id
        r = c.exec([PY, "/.imagegen-test/hang.py"], timeout=2)  # host deadline
        assert r.timed_out and not c.alive()
        r = c.exec([PY, "-c", "print('again')"], timeout=30)  # restarted lazily
        assert r.rc == 0 and r.stdout.strip() == "again" and c.id != first and c.restarts == 1
    finally:
        c.remove()
        shutil.rmtree(wd, ignore_errors=True)
