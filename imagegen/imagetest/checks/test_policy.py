"""Contents policy. File rules read the image's own layers (imagegen.imagetest.inventory), so
they hold for shell-less images and cannot be fooled by anything mounted into a test container.
Runtime rules (user, arbitrary UID, installed distributions) run the image's own Python."""

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from imagegen.imagetest import policy
from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, fail, parse
from imagegen.imagetest.target import POLICY_RULES

ARBITRARY_UID = "12345"


def _enforced(target, rule):
    if not target.rule(rule):
        why = target.policy_notes.get(rule) or f"not enforced for the {target.flavor} flavor"
        pytest.skip(f"rule {rule} ({POLICY_RULES[rule]}): {why}")


def test_non_root(target, image_attrs, envinfo):
    _enforced(target, "non_root")
    user = (image_attrs.get("Config") or {}).get("User") or ""
    if envinfo["uid"] == 0:
        fail(target, f"runs as root (uid 0; image USER is {user or 'unset'})")


def test_arbitrary_uid(target, uid_ctr, smoke):
    """`docker run --user 12345` (no passwd entry, the image's own HOME): HOME is writable
    and the framework imports and infers (Paddle creates ~/.cache at import)."""
    _enforced(target, "arbitrary_uid")
    try:
        env = parse(uid_ctr.python("probes/envinfo.py", timeout=PROBE_TIMEOUT), "environment probe")
    except ProbeError as exc:
        fail(target, f"as uid {ARBITRARY_UID}: {exc}")
    if not env["home_writable"]:
        fail(target, f"as uid {ARBITRARY_UID}: HOME={env['home']} is not writable ({env['home_error']})")
    script, args = smoke
    try:
        res = parse(uid_ctr.python(script, "cpu", *args, timeout=PROBE_TIMEOUT), "CPU smoke inference")
    except ProbeError as exc:
        fail(target, f"as uid {ARBITRARY_UID}: {exc}")
    if not res.get("ok"):
        fail(target, f"as uid {ARBITRARY_UID}: CPU smoke inference: {res.get('error')}")


@pytest.mark.parametrize("rule", list(policy.RULES))
def test_contents(target, inv, rule):
    _enforced(target, rule)
    fn, what = policy.RULES[rule]
    offenders = fn(inv.files, target.allow)
    if offenders:
        fail(target, f"{rule}: {policy.describe(offenders, what)}")


def unmet_requirements(dists: list[dict], marker_env: dict) -> list[str]:
    """pip check without pip: every installed distribution's requirements (markers evaluated
    for the image's interpreter, no extras) are installed at a satisfying version."""
    installed = {canonicalize_name(d["name"]): d["version"] for d in dists if d.get("name") not in (None, "?")}
    problems = [f"broken metadata: {d.get('path') or d.get('name')}: {d['error']}" for d in dists if d.get("error")]
    env = {**marker_env, "extra": ""}
    for d in dists:
        for raw in d.get("requires") or []:
            try:
                req = Requirement(raw)
            except InvalidRequirement:
                problems.append(f"{d['name']} {d['version']} has an invalid requirement {raw!r}")
                continue
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            have = installed.get(name)
            if have is None:
                problems.append(f"{d['name']} {d['version']} requires {req}, which is not installed")
                continue
            try:
                ok = req.specifier.contains(Version(have), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                problems.append(f"{d['name']} {d['version']} requires {req}, but {have} is installed")
    return sorted(set(problems))


def test_deps_consistent(target, envinfo):
    _enforced(target, "deps_consistent")
    problems = unmet_requirements(envinfo["distributions"], envinfo["marker_env"])
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        fail(target, f"pip check: {'; '.join(problems[:3])}{more}")
