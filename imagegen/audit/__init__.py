"""`imagegen audit`: streamed byte accounting of any local image (see docs/audit.md)."""

from .core import audit
from .report import check_gates, compare

__all__ = ["audit", "check_gates", "compare"]
