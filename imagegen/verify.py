"""`imagegen verify REF`: is this image what the repository says it is?

The image's labels name its inputs: the cell (`io.imagegen.cell`), the commit
(`org.opencontainers.image.revision`), the inputs digest and SOURCE_DATE_EPOCH
(`org.opencontainers.image.created`). `verify` checks those against this checkout, rebuilds the cell
cold (no layer cache: a cached build would only hand back the layers being checked), and compares the
two images' config digests. When they differ it compares them field by field and file by file
(imagediff) and names the first differing file.

Outcomes (`Verdict.status`): `reproduced` (same config digest: same layers, same metadata), `differs`
(exit 1; the first difference named), `not-rebuildable` (exit 1: built from uncommitted changes, or
from another commit than this checkout's HEAD: check that commit out and verify there). With
`allow_dirty`, an image built from uncommitted changes on this commit is rebuilt from this working
tree: the answer then says only that this working tree reproduces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import engine, imagediff
from .build import git_revision
from .errors import ImagegenError, UserInputError
from .labels import LABEL_CELL, LABEL_DIGEST, OCI_REVISION


@dataclass
class Verdict:
    """What `verify` found. Digests are "sha256:<hex>"; `seconds` the wall time of the whole check."""

    ref: str
    cell: str
    status: str  # reproduced | differs | not-rebuildable
    image_config_digest: str = ""
    rebuilt_config_digest: str = ""
    inputs_digest: str = ""  # the image's label
    rebuilt_inputs_digest: str = ""  # what this checkout computes
    revision: str = ""
    reason: str = ""
    diff: dict = field(default_factory=dict)  # imagediff.ImageDiff.as_dict() when they differ
    seconds: float = 0.0
    rebuilt_image: str = ""  # the rebuild's image ID, when kept (--keep)

    @property
    def ok(self) -> bool:
        return self.status == "reproduced"


def labels_of(ref: str) -> tuple[str, dict[str, str]]:
    """(image ID, labels) of a local image. Raises UserInputError when there is no such image or `ref`
    is not a reference (:func:`imagegen.engine.inspect_image`)."""
    info = engine.inspect_image(ref)
    return info["Id"], dict((info.get("Config") or {}).get("Labels") or {})


def compare_images(ref: str, other: str) -> Verdict:
    """`ref` against an image already at hand (`other`: a rebuild kept with `--keep`, or one built on
    another machine and loaded here), without building: the same comparison as `verify`."""
    t0 = time.monotonic()
    image_id, labels = labels_of(ref)
    other_id, other_labels = labels_of(other)
    v = Verdict(ref=ref, cell=labels.get(LABEL_CELL, ""), status="differs", inputs_digest=labels.get(LABEL_DIGEST, ""),
                rebuilt_inputs_digest=other_labels.get(LABEL_DIGEST, ""), revision=labels.get(OCI_REVISION, ""),
                image_config_digest=engine.config_digest(image_id), rebuilt_config_digest=engine.config_digest(other_id))
    if v.image_config_digest == v.rebuilt_config_digest:
        v.status = "reproduced"
    else:
        _explain(v, image_id, other_id)
    v.seconds = time.monotonic() - t0
    return v


def _explain(v: Verdict, image_id: str, other_id: str) -> None:
    """Fill `v.diff` and `v.reason` for two images whose config digests differ."""
    d = imagediff.compare(imagediff.read(image_id), imagediff.read(other_id))
    v.diff = d.as_dict()
    if v.rebuilt_inputs_digest and v.inputs_digest != v.rebuilt_inputs_digest:
        v.reason = (f"the inputs differ: the image says {v.inputs_digest[:19]}…, the rebuild "
                    f"{v.rebuilt_inputs_digest[:19]}… (a base rebuilt from a newer mirror state, or a changed lock); ")
    if d.first is not None:
        v.reason += f"first differing file: {d.first.line()}"
    elif d.config:
        v.reason += f"same files; the config differs in {', '.join(d.config[:5])}"


def _explain_path(v: Verdict, image_id: str, rebuilt_with: str) -> None:
    """Say so when the image was built on the other build path than the rebuild (BuildKit and the classic
    builder write different configs for the same files: each path is reproducible on its own)."""
    history = engine.api().history(image_id)
    built_with = "buildkit" if any("buildkit" in (h.get("Comment") or "") for h in history) else "classic"
    if built_with != rebuilt_with:
        v.reason += (f"; the image was built with {'BuildKit' if built_with == 'buildkit' else 'the classic builder'}"
                     f", this rebuild with {'BuildKit' if rebuilt_with == 'buildkit' else 'the classic builder'}: "
                     f"rebuild on the same path (--builder, or an engine with{'' if built_with == 'buildkit' else 'out'}"
                     " the buildx plugin; see docs/build.md#engines)")


def verify(m, ref: str, rebuild, *, builder: str | None = None, keep: bool = False, progress=None,
           allow_dirty: bool = False, announce=None) -> Verdict:
    """Rebuild the image `ref` (a local image) from matrix `m` at this checkout and compare (module
    docstring). `rebuild(m, cell, path, progress) -> (image ID, prepared)`: the pipeline's cold rebuild
    (`pipeline.rebuild`; a stage does not call the pipeline). Raises UserInputError for an image
    imagegen did not build or whose cell the matrix lacks, or a malformed SOURCE_DATE_EPOCH.
    `announce(text)`: told once the rebuild is about to start (after every check that can refuse)."""
    from . import buildkit
    from .build import Progress

    t0 = time.monotonic()
    image_id, labels = labels_of(ref)
    cell_ref = labels.get(LABEL_CELL)
    if not cell_ref:
        raise UserInputError(f"{ref} has no {LABEL_CELL} label: imagegen did not build it")
    try:
        (cell,) = m.select([cell_ref])
    except ImagegenError:
        raise UserInputError(f"{ref} was built from cell {cell_ref}, which {m.path} does not list") from None
    verdict = Verdict(ref=ref, cell=cell_ref, status="differs", inputs_digest=labels.get(LABEL_DIGEST, ""),
                      revision=labels.get(OCI_REVISION, ""), image_config_digest=engine.config_digest(image_id))
    head = git_revision()
    dirty_ok = allow_dirty and verdict.revision.endswith("-dirty") and head == verdict.revision
    if (verdict.revision.endswith("-dirty") and not dirty_ok) or verdict.revision in ("", "unknown"):
        verdict.status = "not-rebuildable"
        verdict.reason = (f"built from uncommitted changes ({verdict.revision})" if verdict.revision.endswith("-dirty")
                          else "its revision label names no commit")
        verdict.seconds = time.monotonic() - t0
        return verdict
    if head != verdict.revision:
        verdict.status = "not-rebuildable"
        if head.removesuffix("-dirty") == verdict.revision:
            verdict.reason = (f"built from commit {verdict.revision[:12]}, and this checkout has uncommitted "
                              "changes: commit or stash them, or verify from a clean worktree of that commit")
        else:
            verdict.reason = (f"built from commit {verdict.revision[:12]}, this checkout is at {head[:12]}: "
                              f"`git worktree add /tmp/verify {verdict.revision[:12]}` and run verify there")
        verdict.seconds = time.monotonic() - t0
        return verdict
    from . import reproduce

    reproduce.env_epoch()  # a malformed SOURCE_DATE_EPOCH: its one line, before any work
    info = engine.current()
    path = buildkit.choose(builder, engine_version=f"Docker {info.server_version}, API {info.api_version}")
    if announce is not None:
        announce(f"verifying {ref}: a cold rebuild of {cell_ref} from this checkout ({path.kind} build path)")
    before = set(engine.api().images(quiet=True, all=True))  # a rebuild equal to one of these IS that image
    rebuilt, prep = rebuild(m, cell, path, progress or Progress(None))
    try:
        verdict.rebuilt_inputs_digest = prep.digest
        verdict.rebuilt_config_digest = engine.config_digest(rebuilt)
        if verdict.rebuilt_config_digest == verdict.image_config_digest:
            verdict.status = "reproduced"
        else:
            _explain(verdict, image_id, rebuilt)
            _explain_path(verdict, image_id, path.kind)
        verdict.rebuilt_image = rebuilt if keep else ""
    finally:
        # a rebuild identical to an image already here (the user's image, or another build of the same
        # inputs, tagged or not) IS that image: only an image this rebuild made, untagged, is removed
        import docker.errors

        try:
            info = engine.api().inspect_image(rebuilt)  # its full ID: a build may name it by a short one
            if not keep and info["Id"] not in before and not info.get("RepoTags"):
                engine.api().remove_image(info["Id"], noprune=True)
        except docker.errors.APIError:
            pass
    verdict.seconds = time.monotonic() - t0
    return verdict


@dataclass
class SignatureVerdict:
    """`verify HOST/REPO:TAG --key PUB`: the image's manifest digest, its signatures checked
    (signing.verify_signatures) and the attestations found (attest.find). `ok`: at least one valid
    signature."""

    ref: str
    digest: str
    signatures: list[dict] = field(default_factory=list)
    attestations: list[dict] = field(default_factory=list)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return any(s["ok"] for s in self.signatures)


def verify_signed(ref: str, public_key_path) -> SignatureVerdict:
    """Check the signatures of the registry image `ref` (host/repo:tag or @digest) against the public
    key at `public_key_path`. Fails closed: no signature, or none that verifies, is not ok (`reason`)."""
    from dataclasses import asdict

    from . import attest, signing
    from .publish import credentials
    from .registry import Registry

    key = signing.load_public_key(public_key_path)
    host, repo, reference = attest.parse_ref(ref)
    reg = Registry(host, auth=credentials(host))
    m = reg.get_manifest(repo, reference)
    if m is None:
        raise ImagegenError(f"{ref}: no such image in the registry")
    image = reg.image_for(repo, m) or m
    v = SignatureVerdict(ref=ref, digest=image.digest)
    v.signatures = [asdict(c) for c in signing.verify_signatures(reg, repo, image.digest, key)]
    v.attestations = [asdict(f) for f in attest.find(reg, repo, image.digest)]
    if not v.signatures:
        v.reason = f"no signature: {host}/{repo}:{attest.fallback_tag(image.digest, 'sig')} does not exist"
    elif not v.ok:
        v.reason = "no signature verifies: " + "; ".join(s["why"] for s in v.signatures)
    return v
