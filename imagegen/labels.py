"""Image label names imagegen writes and reads (build, test, publish, bases).

The per-cell ``io.imagegen.*`` axis labels are written by templates/partials/labels.j2; the
labels only known at build time (digest, revision, created, closure) by the pipeline.
"""

from __future__ import annotations

import os

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
BASE_PREFIX = f"{PREFIX}.base"  # bootstrapped base images: io.imagegen.base=1, .name, .role, ...

OCI = "org.opencontainers.image"
OCI_TITLE = f"{OCI}.title"
OCI_VERSION = f"{OCI}.version"
OCI_REVISION = f"{OCI}.revision"
OCI_SOURCE = f"{OCI}.source"
OCI_CREATED = f"{OCI}.created"

SOURCE_URL = os.environ.get("IMAGEGEN_SOURCE_URL", "https://github.com/imagegen/imagegen")

# Labels every built image must carry (the image tests check them; values per cell in TestTarget).
REQUIRED = (OCI_TITLE, OCI_VERSION, OCI_REVISION, OCI_SOURCE, OCI_CREATED, FRAMEWORK, FRAMEWORK_VERSION, DEVICE,
            PYTHON, FLAVOR, LABEL_DIGEST)
REQUIRED_GPU = (CUDA, CUDNN, CUDA_ARCHS)
