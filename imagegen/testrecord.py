"""Test records: the proof that the image test suite passed on an exact image ID.

`imagegen build` (after its tests) and `imagegen test` write one record per image whose checks all
passed; `imagegen build` re-runs the tests when the inputs are unchanged but the current image has no
record; `imagegen publish` refuses an image without one (unless `--force`).

Records live under the cache root, one JSON file per image ID:
`$IMAGEGEN_CACHE/test-records/<sha256 hex of the image ID>.json`, schema `imagegen.test-record/1`:
`{image_id, cell, inputs_digest, passed, skipped, time (UTC ISO 8601), seconds, imagegen}`.
A record is keyed by the image ID (the sha256 of the image config), so a rebuilt image (new ID) never
inherits the record of the one before, whatever its tag.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import paths

SCHEMA = "imagegen.test-record/1"
_ID = re.compile(r"^sha256:([0-9a-f]{64})$")


def _root() -> Path:
    return paths.cache_root() / "test-records"


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

    __test__ = False  # not a pytest class


def path_for(image_id: str) -> Path:
    """The record file of `image_id` (`sha256:<64 hex>`); ValueError for anything else."""
    m = _ID.match(image_id or "")
    if not m:
        raise ValueError(f"not an image ID: {image_id!r}")
    return _root() / f"{m.group(1)}.json"


def write(image_id: str, cell: str, inputs_digest: str | None, *, passed: int, skipped: int,
          seconds: float) -> TestRecord:
    """Record a passing suite on `image_id` (atomic write). Callers only call it when every check passed."""
    from . import __version__

    rec = TestRecord(image_id=image_id, cell=cell, inputs_digest=inputs_digest, passed=passed, skipped=skipped,
                     seconds=round(seconds, 2), time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     imagegen=__version__)
    path = path_for(image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rec-")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(rec), fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return rec


def find(image_id: str) -> TestRecord | None:
    """The passing record of exactly this image ID, or None (missing, unreadable or for another ID)."""
    try:
        data = json.loads(path_for(image_id).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("image_id") != image_id:
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
        results = [r for r in summary.results if r.image == name]
        if not results or any(r.outcome in ("failed", "error") for r in results):
            continue
        written.append(write(image_id, cell, digest, passed=sum(r.outcome == "passed" for r in results),
                             skipped=sum(r.outcome == "skipped" for r in results),
                             seconds=sum(r.seconds for r in results)))
    return written
