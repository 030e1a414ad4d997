"""trivy's vulnerability DB for `imagegen scan`: where it lives and how it may be fetched (`Options`), whether
it is there (`missing_db`: one line naming the files looked for and the remedy) and how old it is (`db_info`:
stale past its NextUpdate or `max_db_age` days). Reads files only; runs nothing (`imagegen.trivy` runs trivy).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ImagegenError

DB_HELP = ("trivy's vulnerability DB is missing from {cache}: on a connected machine run `trivy image "
           "--download-db-only --cache-dir DIR` and copy DIR here (--cache-dir DIR), or point --db-repository "
           "at an OCI mirror of ghcr.io/aquasecurity/trivy-db (without --skip-db-update / --offline-scan)")
#: days after which a vulnerability DB counts as stale even before its NextUpdate
MAX_DB_AGE_DAYS = 30


def valid_repository(ref: str) -> bool:
    """An OCI repository reference for --db-repository: host[:port]/path[:tag], lowercase."""
    return bool(re.fullmatch(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9_.-]+)?", ref))


@dataclass(frozen=True)
class Options:
    cache_dir: Path | None = None
    skip_db_update: bool = False
    offline_scan: bool = False
    db_repository: str | None = None
    timeout: int = 1800
    max_db_age: int = MAX_DB_AGE_DAYS  # days

    def common(self) -> list[str]:
        args = []
        if self.cache_dir:
            args += ["--cache-dir", str(self.cache_dir)]
        if self.offline_scan:
            args.append("--offline-scan")
        return args

    @property
    def cache(self) -> Path:  # --cache-dir, else trivy's default
        return self.cache_dir or Path.home() / ".cache" / "trivy"

    @property
    def db_path(self) -> Path:
        return self.cache / "db" / "trivy.db"

    @property
    def metadata_path(self) -> Path:
        return self.cache / "db" / "metadata.json"


class VulnDbMissing(ImagegenError):
    """No vulnerability DB where trivy looks, and it may not download one."""


@dataclass
class DbInfo:
    """trivy's DB, from `<cache>/db/metadata.json`: `version` (DB schema), `updated_at` (DB built),
    `next_update` (newer one due), `downloaded_at`: RFC 3339 UTC strings as trivy wrote them; `age_days`:
    days from `updated_at` to the scan; `stale`: past `next_update` or `max_age_days` old; `warning`: a line."""
    path: str
    version: int | None = None
    updated_at: str | None = None
    next_update: str | None = None
    downloaded_at: str | None = None
    age_days: float | None = None
    max_age_days: int = MAX_DB_AGE_DAYS
    stale: bool = False
    warning: str | None = None


def _when(text) -> dt.datetime | None:
    """An RFC 3339 time as trivy writes it (Go: nanoseconds, `Z`) -> aware UTC datetime; None if unreadable."""
    try:
        when = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def db_info(opts: Options, now: dt.datetime | None = None) -> DbInfo | None:
    """The DB's age and due date from `<cache>/db/metadata.json` (None without it); `now`: aware datetime."""
    meta = opts.metadata_path
    if not meta.is_file():
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    info = DbInfo(str(opts.db_path), max_age_days=opts.max_db_age)
    try:
        data = json.loads(meta.read_text())
        assert isinstance(data, dict), "not a JSON object"
    except (OSError, ValueError, AssertionError) as exc:
        info.stale, info.warning = True, f"{meta} is unreadable ({exc}); the DB's age is unknown"
        return info
    info.version = data.get("Version") if isinstance(data.get("Version"), int) else None
    info.updated_at, info.next_update, info.downloaded_at = (str(data[k]) if data.get(k) else None
                                                             for k in ("UpdatedAt", "NextUpdate", "DownloadedAt"))
    updated, due = _when(info.updated_at), _when(info.next_update)
    if updated is not None:
        info.age_days = round((now - updated).total_seconds() / 86400, 2)
    why = []
    if due is not None and now > due:
        why.append(f"past its NextUpdate {info.next_update}")
    if info.age_days is not None and info.age_days >= opts.max_db_age:
        why.append(f"over {opts.max_db_age} days old")
    if updated is None:
        why.append("its age is unknown (no readable UpdatedAt)")
    if why:
        info.stale, age = True, f"{info.age_days:.1f} days old" if info.age_days is not None else "of unknown age"
        info.warning = (f"trivy's vulnerability DB {opts.db_path} is {age} (UpdatedAt {info.updated_at}, NextUpdate "
                        f"{info.next_update}): {' and '.join(why)}; findings published since are not reported. "
                        "Refresh it: `trivy image --download-db-only --cache-dir DIR` on a connected machine")
    return info


def missing_db(opts: Options) -> str | None:
    """None when `<cache>/db/trivy.db` and `<cache>/db/metadata.json` are both there; else one line that
    names both files, which is missing, a DB found one level too high (`<cache>/trivy.db`), and the remedy."""
    db, meta = opts.db_path, opts.metadata_path
    missing = [p.name for p in (db, meta) if not p.is_file()]
    if not missing:
        return None
    looked = f"looked for {db} and {meta}, {' and '.join(missing)} missing"
    high = [p for p in (opts.cache / "trivy.db", opts.cache / "metadata.json") if p.is_file()]
    if high:
        return (f"trivy's vulnerability DB is one level too high: found {' and '.join(map(str, high))} ({looked}); "
                f"move trivy.db and metadata.json into {opts.cache / 'db'}/")
    return f"{DB_HELP.format(cache=opts.cache)} ({looked})"
