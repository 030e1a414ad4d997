"""The image test suite: pytest + testinfra checks of built images (see docs/testing.md).

Public API:
    TestTarget, policy_for           what an image is tested against (built from a matrix Cell)
    run_targets(targets, junit_path, *, checks=None, keyword=None, verbose=False) -> Summary
    load_inventory(image) -> Inventory   layer sizes, gzip sizes and the merged file list (cached)
"""

from .inventory import Inventory, load_inventory
from .runner import CHECK_MODULES, CheckResult, Summary, run_targets
from .target import POLICY_RULES, REQUIRED_LABELS, TestTarget, policy_for

__all__ = [
    "CHECK_MODULES", "CheckResult", "Inventory", "POLICY_RULES", "REQUIRED_LABELS", "Summary", "TestTarget",
    "load_inventory", "policy_for", "run_targets",
]
