"""Image label and annotation names imagegen writes and reads (build, test, publish, bases, audit).

The only place they are spelled (tests/unit/test_house_rules.py keeps it so). A cell's static labels
(:func:`static`) are rendered into its Dockerfile by templates/partials/labels.j2; the labels only
known at build time (digest, revision, created, closure) are added by the pipeline.
"""

from __future__ import annotations

from . import settings

PREFIX = "io.imagegen"
LABEL_DIGEST = f"{PREFIX}.inputs-digest"  # sha256 of everything a build reads (pipeline.inputs_digest)
LABEL_CELL = f"{PREFIX}.cell"
LABEL_CLOSURE = f"{PREFIX}.closure"
FRAMEWORK = f"{PREFIX}.framework"
FRAMEWORK_VERSION = f"{PREFIX}.framework.version"
DEVICE = f"{PREFIX}.device"
PYTHON = f"{PREFIX}.python"
FLAVOR = f"{PREFIX}.flavor"
CUDA = f"{PREFIX}.cuda"
CUDNN = f"{PREFIX}.cudnn"
CUDA_ARCHS = f"{PREFIX}.cuda.archs"  # GPUs the image's CUDA kernels serve, e.g. sm_61,sm_70 (gpu_archs)
CUDA_DRIVER_MIN = f"{PREFIX}.cuda.driver-min"  # the CUDA release's minimum driver (data: cuda.yaml)
BASE_PREFIX = f"{PREFIX}.base"  # bootstrapped base images: io.imagegen.base=1, .name, .role, ...
CELL_BASE = BASE_PREFIX  # on a cell's image: the name of the base it was built on
ATTESTATION_KIND = f"{PREFIX}.attestation.kind"  # annotation of an attached SBOM or provenance manifest

OCI = "org.opencontainers.image"
OCI_TITLE = f"{OCI}.title"
OCI_VERSION = f"{OCI}.version"
OCI_REVISION = f"{OCI}.revision"
OCI_SOURCE = f"{OCI}.source"
OCI_CREATED = f"{OCI}.created"
OCI_BASE_NAME = f"{OCI}.base.name"
OCI_DESCRIPTION = f"{OCI}.description"
OCI_LICENSES = f"{OCI}.licenses"
OCI_VENDOR = f"{OCI}.vendor"
OCI_REF_NAME = f"{OCI}.ref.name"  # annotation of an OCI layout's index entry: the image's tag

SOURCE_URL = settings.SOURCE_URL.value()

# Labels every built image must carry (the image tests check them; values per cell in TestTarget).
REQUIRED = (OCI_TITLE, OCI_VERSION, OCI_REVISION, OCI_SOURCE, OCI_CREATED, FRAMEWORK, FRAMEWORK_VERSION, DEVICE,
            PYTHON, FLAVOR, LABEL_DIGEST)
REQUIRED_GPU = (CUDA, CUDNN, CUDA_ARCHS)


def static(*, title: str, tag: str, base_ref: str, framework: str, version: str, device: str, cuda: str | None,
           cudnn: str | None, python: str, flavor: str, base: str, driver_min: str | None) -> list[tuple[str, str]]:
    """A cell's labels known before the build, in the order its Dockerfile's LABEL lists them:
    [(name, value)]. The minimum driver only when the cell has one (GPU cells)."""
    out = [(OCI_TITLE, title), (OCI_VERSION, tag), (OCI_BASE_NAME, base_ref), (FRAMEWORK, framework),
           (FRAMEWORK_VERSION, version), (DEVICE, device), (CUDA, cuda or ""), (CUDNN, cudnn or ""),
           (PYTHON, python), (FLAVOR, flavor), (CELL_BASE, base)]
    if driver_min:
        out.append((CUDA_DRIVER_MIN, driver_min))
    return out
