"""Test records: the proof that the image test suite passed on an exact image, named by its config digest.

`imagegen build` (after its tests) and `imagegen test` write one record per image whose checks all
passed; `imagegen build` re-runs the tests when the inputs are unchanged but the current image has no
record; `imagegen publish` refuses an image without one (unless `--skip-test-check`).

A record is keyed by the image's **config digest** (the sha256 of its config JSON), which names the same
image on every engine and in every registry. On the graph-driver image store the engine's image ID is that
digest; on the containerd image store the image ID is the manifest digest, and the config digest comes from
`engine.config_digest` (an index under the cache root, else the engine's save stream, read once). Callers
pass an image ID or reference, as before: `find` and `write` resolve the config digest themselves. A rebuilt
image (new config) never inherits the record of the one before, whatever its tag.

Records live under the cache root, one JSON file per config digest:
`$IMAGEGEN_CACHE/test-records/<sha256 hex of the config digest>.json`, schema `imagegen.test-record/2`:
`{config_digest, image_id (the engine's ID when it was written), cell, inputs_digest, passed, skipped,
time (UTC ISO 8601), seconds, imagegen}`. Records of schema `imagegen.test-record/1` (no
`config_digest`, keyed by the image ID) are still read: their file holds for the config digest equal to
their `image_id`, which is how graph-driver engines, the only ones that wrote them, name an image.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import engine, paths

SCHEMA = "imagegen.test-record/2"
SCHEMA_V1 = "imagegen.test-record/1"
_ID = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class TestRecord:
    image_id: str
    cell: str
    inputs_digest: str | None
    passed: int
    skipped: int
    seconds: float
    time: str
    imagegen: str = ""
    schema: str = SCHEMA
    config_digest: str = ""  # the key; a /1 record read back gets its image_id here

    __test__ = False  # not a pytest class


def path_for(config_digest: str) -> Path:
    """The record file of `config_digest` (`sha256:<64 hex>`); ValueError for anything else."""
    m = _ID.match(config_digest or "")
    if not m:
        raise ValueError(f"not a config digest: {config_digest!r}")
    return paths.test_records_dir() / f"{m.group(1)}.json"


def write(image_id: str, cell: str, inputs_digest: str | None, *, passed: int, skipped: int,
          seconds: float, config_digest: str | None = None) -> TestRecord:
    """Record a passing suite on the image `image_id` (atomic write), under its config digest
    (`engine.config_digest(image_id)` unless given). Callers only call it when every check passed."""
    from . import __version__

    digest = config_digest or engine.config_digest(image_id)
    rec = TestRecord(image_id=image_id, config_digest=digest, cell=cell, inputs_digest=inputs_digest, passed=passed,
                     skipped=skipped, seconds=round(seconds, 2),
                     time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), imagegen=__version__)
    paths.write_json_atomic(path_for(digest), asdict(rec), indent=1, sort_keys=True)
    return rec


def find(image: str) -> TestRecord | None:
    """The passing record of exactly this image (ID or reference, resolved to its config digest by
    `engine.config_digest`; EngineError for an image the engine does not have), or None (missing,
    unreadable, or a record of another image)."""
    return find_by_config(engine.config_digest(image))


def find_by_config(config_digest: str) -> TestRecord | None:
    """The passing record of the image with this config digest, or None (no engine call)."""
    try:
        data = json.loads(path_for(config_digest).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("schema") == SCHEMA_V1 and data.get("image_id") == config_digest:
        data = {**data, "config_digest": config_digest}
    elif data.get("schema") != SCHEMA or data.get("config_digest") != config_digest:
        return None
    try:
        return TestRecord(**{k: data[k] for k in TestRecord.__dataclass_fields__ if k in data})
    except TypeError:
        return None


def record_summary(summary, image_ids: dict[str, tuple[str, str, str | None]]) -> list[TestRecord]:
    """Write records for every image of a suite run whose checks all passed.

    `summary` is an `imagetest.runner.Summary`; `image_ids` maps the image name used in its results
    (tag or ID) to `(image_id, cell ref, inputs digest)`. Returns the records written."""
    written = []
    if summary.exit_code not in (0, 1, 5):  # pytest itself broke: no result is trustworthy
        return written
    for name, (image_id, cell, digest) in image_ids.items():
        results = [r for r in summary.results if r.image in (name, "")]  # "": a check module for every image
        if not results or any(r.outcome in ("failed", "error") for r in results):
            continue
        written.append(write(image_id, cell, digest, passed=sum(r.outcome == "passed" for r in results),
                             skipped=sum(r.outcome == "skipped" for r in results),
                             seconds=sum(r.seconds for r in results)))
    return written
