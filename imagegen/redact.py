"""Credentials never leave the host: URLs and messages with user:password@ and secret-looking
query values replaced by ``***`` before they are written to a lock file, a log or a message."""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "***"

_SECRET_QUERY = re.compile(r"(token|key|secret|sig|signature|password|passwd|pwd|auth|credential|x-amz-|x-goog-)",
                           re.I)


def redact_url(url: str) -> str:
    """The URL without credentials: user:password@ becomes ***@, secret-looking query values become ***.

    Fragments are dropped (a #sha256= fragment is recorded separately)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={REDACTED if _SECRET_QUERY.search(k) else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def is_redacted(url: str) -> bool:
    return REDACTED in url


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted (redact_url)."""
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", lambda m: redact_url(m.group(0)), text, flags=re.I)
