"""Which category a path's bytes belong to. Every visible byte gets exactly one category, so the
categories add up to the image's visible total. Inside ELF files, `.debug_*` sections are charged
to `debug` and `.nv_fatbin` sections to `cuda_kernels`; the rest of the file keeps its path's
category.

Order matters: the first rule that matches wins (a header inside a CUDA wheel is a `header`,
because the `headers` slimming rule is what removes it)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    group: str
    rule: str | None       # the build's slimming rule that removes these bytes, if any
    label: str


# name -> (group, slimming rule, label)
CATEGORIES: dict[str, Category] = {}


def _cat(name: str, group: str, rule: str | None, label: str) -> None:
    CATEGORIES[name] = Category(name, group, rule, label)


_cat("cache:pip", "caches", "caches", "pip cache")
_cat("cache:apt", "caches", "caches", "apt caches and lists")
_cat("cache:conda", "caches", "caches", "conda package cache")
_cat("cache:other", "caches", "caches", "other caches (~/.cache)")
_cat("bytecode", "bytecode", "bytecode", "Python bytecode (.pyc)")
_cat("docs", "docs", "docs", "documentation")
_cat("man", "docs", "docs", "man and info pages")
_cat("locales", "docs", "docs", "locales and translations")
# kept on purpose by every image (the sysroot stage and the bases keep them): no slimming rule
_cat("licenses", "licenses", None, "Debian copyright files (licence texts, /usr/share/doc/<package>/copyright)")
_cat("locale:c_utf8", "system", None, "the C.UTF-8 locale (Python's UTF-8 mode and glibc need it)")
_cat("tests", "tests", "tests", "test suites")
_cat("headers", "headers", "headers", "C/C++/CUDA headers")
_cat("static_libs", "static_libs", "static_libs", "static libraries (.a)")
_cat("debug", "debug", "strip", "ELF debug sections (.debug_*)")
_cat("cuda_kernels", "cuda", "gpu_archs", "CUDA kernels (.nv_fatbin sections)")

CUDA_COMPONENTS: list[tuple[str, str]] = [
    # (component, regex on the file name)
    ("cudnn", r"^libcudnn"),
    ("cublas", r"^libcublas"),
    ("cufft", r"^libcufft"),
    ("cusolver", r"^libcusolver"),
    ("cusparse", r"^libcusparse"),
    ("curand", r"^libcurand"),
    ("nccl", r"^libnccl"),
    ("nvrtc", r"^libnvrtc"),
    ("cupti", r"^(libcupti|libnvperf|libpcsamplingutil|libcheckpoint)"),
    ("nvjitlink", r"^libnvJitLink"),
    ("cudart", r"^libcudart"),
    ("npp", r"^libnpp"),
    ("nvjpeg", r"^libnvjpeg"),
    ("cufile", r"^libcufile"),
    ("nvtx", r"^libnvToolsExt"),
    ("cusparselt", r"^libcusparseLt"),
    ("nvblas", r"^libnvblas"),
    ("toolkit", r"^(nvcc|ptxas|nvlink|fatbinary|cicc|cudafe\+\+|cuobjdump|nvdisasm|nvprune|libnvvm|libnvptxcompiler)"),
]
_CUDA_RE = [(c, re.compile(r)) for c, r in CUDA_COMPONENTS]
# nvidia/<dir>/ of pip wheels -> component
_NVIDIA_DIRS = {"cudnn": "cudnn", "cublas": "cublas", "cufft": "cufft", "cusolver": "cusolver",
                "cusparse": "cusparse", "curand": "curand", "nccl": "nccl", "cuda_nvrtc": "nvrtc",
                "cuda_cupti": "cupti", "nvjitlink": "nvjitlink", "cuda_runtime": "cudart", "npp": "npp",
                "nvjpeg": "nvjpeg", "cufile": "cufile", "nvtx": "nvtx", "cusparselt": "cusparselt",
                "cuda_nvcc": "toolkit", "cuda_nvtx": "nvtx"}
for _c, _ in CUDA_COMPONENTS:
    _cat(f"cuda:{_c}", "cuda", None, f"CUDA {_c}")
_cat("cuda:other", "cuda", None, "other files of a CUDA install")

FRAMEWORKS = {"paddle": "paddle", "torch": "torch", "onnxruntime": "onnxruntime", "tensorflow": "tensorflow",
              "jax": "jax", "jaxlib": "jax", "triton": "triton", "torchvision": "torch", "torchaudio": "torch",
              "paddle_inference": "paddle", "paddlenlp": "paddle", "paddlex": "paddle", "paddleocr": "paddle"}
for _f in sorted(set(FRAMEWORKS.values())):
    _cat(f"framework:{_f}", "framework", None, f"framework: {_f}")
_cat("python_packages", "python", None, "other Python packages (site-packages)")
_cat("python", "python", None, "Python interpreter and standard library")
_cat("system_libs", "system", None, "shared libraries")
_cat("binaries", "system", None, "executables in bin/ and sbin/")
_cat("system_data", "system", None, "/usr/share, /etc and other system data")
_cat("other", "other", None, "everything else")

# rules that remove whole files matched by name, beyond categories
RULE_FILES = {
    "cudnn_train": re.compile(r"^libcudnn_\w*train\w*\.so"),
    "flashattn": re.compile(r"^libflashattn\w*\.so"),
    "warpctc": re.compile(r"^(libwarpctc|libwarprnnt)\w*\.so"),
}

_SITE = re.compile(r"/(?:site|dist)-packages/")
_PYSTDLIB = re.compile(r"^/(?:usr/(?:local/)?)?lib(?:64)?/python3[\d.]*/|/lib/python3[\d.]*/")
_TESTDIR = re.compile(r"/(?:tests?)/")
_HEADER_EXT = (".h", ".hh", ".hpp", ".hxx", ".cuh", ".inl", ".inc", ".tcc", ".h++")
_LIBDIR = re.compile(r"/lib(?:32|64|x32)?/|/lib/[\w-]+-linux-gnu/|\.libs/")


def category_of(path: str) -> str:
    """Category of a regular file at absolute path `path` (bytes outside ELF debug/fatbin sections)."""
    p = path
    base = p.rsplit("/", 1)[-1]
    # caches
    if "/.cache/pip/" in p or p.startswith("/root/.cache/pip") or "/pip-cache/" in p:
        return "cache:pip"
    if p.startswith("/var/cache/apt/") or p.startswith("/var/lib/apt/lists/") or p.startswith("/var/cache/debconf/"):
        return "cache:apt"
    if re.search(r"/(?:conda|miniconda3?|anaconda3?|mambaforge|miniforge3?)/pkgs/", p) or "/.conda/pkgs/" in p:
        return "cache:conda"
    if "/.cache/" in p and p.startswith(("/root/", "/home/")):
        return "cache:other"
    # bytecode
    if base.endswith((".pyc", ".pyo")) or "/__pycache__/" in p:
        return "bytecode"
    # docs
    if p.startswith(("/usr/share/man/", "/usr/local/share/man/", "/usr/share/info/", "/usr/local/man/")):
        return "man"
    if p.startswith(("/usr/lib/locale/C.utf8/", "/usr/lib/locale/C.UTF-8/")):
        return "locale:c_utf8"
    if p.startswith("/usr/share/doc/") and p.count("/") == 5 and base == "copyright":
        return "licenses"
    if p.startswith(("/usr/share/locale/", "/usr/local/share/locale/", "/usr/share/i18n/", "/usr/lib/locale/")) \
            or "/locale/" in p and base.endswith(".mo"):
        return "locales"
    if p.startswith(("/usr/share/doc/", "/usr/local/share/doc/", "/usr/share/doc-base/", "/usr/share/gtk-doc/",
                     "/usr/share/lintian/")) or "/doc/" in p and _SITE.search(p) is None:
        return "docs"
    # tests (inside Python packages and the standard library)
    m = _SITE.search(p)
    if m:
        if _TESTDIR.search(p[m.end() - 1:]) or (base.startswith("test_") and base.endswith(".py")):
            return "tests"
    else:
        m = _PYSTDLIB.search(p)
        if m and (_TESTDIR.search(p[m.end() - 1:]) or "/idle_test/" in p):
            return "tests"
    # headers
    if base.endswith(_HEADER_EXT) or "/include/" in p and "." not in base:
        return "headers"
    # static libraries
    if base.endswith(".a") and (base.startswith("lib") or _LIBDIR.search(p)):
        return "static_libs"
    # CUDA components
    comp = cuda_component(p, base)
    if comp:
        return f"cuda:{comp}"
    # frameworks and Python
    m = _SITE.search(p)
    if m:
        top = p[m.end():].split("/", 1)[0]
        fw = FRAMEWORKS.get(top) or FRAMEWORKS.get(top.split(".libs")[0]) or FRAMEWORKS.get(top.split("-")[0])
        if fw and not top.endswith(".dist-info"):
            return f"framework:{fw}"
        return "python_packages"
    if _PYSTDLIB.search(p) or re.match(r"^/(?:usr/(?:local/)?)?bin/python3", p) or base.startswith("libpython3"):
        return "python"
    if p.startswith(("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "/usr/local/sbin/")):
        return "binaries"
    if ".so" in base and _LIBDIR.search(p):
        return "system_libs"
    if p.startswith(("/usr/share/", "/etc/", "/usr/lib/", "/var/lib/")):
        return "system_data"
    return "other"


def cuda_component(path: str, base: str | None = None) -> str | None:
    base = base if base is not None else path.rsplit("/", 1)[-1]
    for comp, rx in _CUDA_RE:
        if rx.search(base):
            return comp
    m = re.search(r"/nvidia/([\w]+)/", path)
    if m and _SITE.search(path):
        return _NVIDIA_DIRS.get(m.group(1), None) or "other"
    if path.startswith("/usr/local/cuda"):
        return "other"
    return None


def rule_for_file(path: str) -> str | None:
    """A whole-file slimming rule (cudnn_train, flashattn, warpctc) this file falls under."""
    base = path.rsplit("/", 1)[-1]
    for rule, rx in RULE_FILES.items():
        if rx.search(base):
            return rule
    return None


def group_of(category: str) -> str:
    c = CATEGORIES.get(category)
    return c.group if c else category.split(":", 1)[0]


def all_names() -> list[str]:
    return sorted(set(CATEGORIES) | {c.group for c in CATEGORIES.values()})
