"""The secret scan of `imagegen scan`, without running trivy (`imagegen.trivy.secrets` runs it): imagegen's
own rules (`secret_config`), trivy's secret findings (`parse_secrets`), and what allows a finding:

- `imagegen/data/secrets-allow.yaml` (`secret_allowlist`): third-party test keys known to imagegen;
- the user's allowlist (`--secret-allow FILE`, `load_secret_allow`): `allow: [{rule and/or path, reason,
  expires: YYYY-MM-DD}]`. An entry applies up to its expiry date included; an expired one no longer
  allows anything and is reported (`expired_allows`), as is a live one that matches no finding
  (`unused_allows`). imagegen's own rules (`imagegen-*`: the build host's CA, mirror credentials) are
  never allowed by a user entry.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import compat
from .errors import UserInputError

#: rule IDs of imagegen's own rules (`secret_config`): leaks of the build's own secrets
OWN_RULES = "imagegen-"
#: the keys of a user allowlist entry
ALLOW_KEYS = ("rule", "path", "reason", "expires")


@dataclass
class Secret:
    rule: str
    title: str
    severity: str
    path: str
    line: int
    allowed: str | None = None  # the reason, when an allowlist entry covers it
    allowed_by: str | None = None  # that entry: `<file>: allow[i]`
    expired_allow: str | None = None  # an expired user entry that would have allowed it: `<file>: allow[i]`


def host_extra_cas() -> list[str]:
    """Base64 bodies of CA certificates the build host trusts (PIP_CERT / REQUESTS_CA_BUNDLE /
    SSL_CERT_FILE / the system bundle) that neither Mozilla's bundle (certifi) nor Debian's
    ca-certificates holds: an inspecting proxy's CA, a corporate root."""
    import certifi

    def pems(text: str) -> set[str]:
        return {"".join(b.split()) for b in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                                                         text, re.S)}

    bundles = {os.environ.get(k) for k in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")} - {None, ""}
    bundles.add("/etc/ssl/certs/ca-certificates.crt")
    mozilla = pems(Path(certifi.where()).read_text())
    for f in Path("/usr/share/ca-certificates/mozilla").glob("*.crt"):  # Debian's ca-certificates
        mozilla |= pems(f.read_text(errors="replace"))
    extra: set[str] = set()
    for b in bundles:
        try:
            extra |= pems(Path(b).read_text()) - mozilla
        except OSError:
            continue
    return sorted(extra)


# Files outside installed packages where configuration (and so a leaked credential) lives.
CONFIG_PATHS = r"^/?(etc|root|home|usr/local/etc|opt/venv/(pip\.conf|pyvenv\.cfg|uv\.toml|bin/[^/]+))(/|$)"


def secret_config(path: Path) -> Path:
    """trivy secret config: imagegen's rules on top of trivy's built-in ones."""
    rules = [{
        # Where a mirror credential of the build would land: pip/uv/apt/netrc configuration, not the
        # documentation inside installed packages (httpx's docstrings show `https://user:secret@host`).
        "id": "imagegen-url-credentials", "category": "imagegen", "title": "URL with a user:password (mirror credential)",
        "severity": "CRITICAL", "regex": r"(?i)\b(?:https?|ftp)://[A-Za-z0-9._~%!$&'()*+,;=-]+:[^@\s/'\"]{3,}@[A-Za-z0-9.-]+",
        "keywords": ["://"], "path": CONFIG_PATHS,
    }, {
        "id": "imagegen-apt-netrc-password", "category": "imagegen", "title": "apt auth.conf / .netrc password",
        "severity": "CRITICAL", "regex": r"(?i)\bpassword\s+\S+", "keywords": ["password"],
        "path": r"^/?(etc/apt/auth\.conf(\.d/.*)?|(root|home/[^/]+)/\.netrc)$",
    }]
    for i, body in enumerate(host_extra_cas()):
        # one 64-character line of the certificate's PEM body identifies it wherever it was copied
        line = body[64:128] if len(body) >= 128 else body[:64]
        rules.append({"id": f"imagegen-host-ca-{i}", "category": "imagegen",
                      "title": "a CA certificate of the build host (not in Mozilla's bundle)", "severity": "CRITICAL",
                      "regex": re.escape(line), "keywords": [line[:16]]})
    path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return path


def secret_allowlist() -> list[dict]:
    """`imagegen/data/secrets-allow.yaml`: known third-party test keys, each with a reason."""
    return compat.secret_allowlist()


@dataclass(frozen=True)
class SecretAllow:
    """An entry of a user's secret allowlist: a finding of rule `rule` (None: any rule but imagegen's own)
    at an image path matching the glob `path` (None: any path) is allowed, for `reason`, until `expires`
    (that day included). `file`, `index`: where the entry is (`<file>: allow[<index>]`)."""
    file: str
    index: int
    reason: str
    expires: dt.date
    rule: str | None = None
    path: str | None = None

    @property
    def entry(self) -> str:
        return f"{self.file}: allow[{self.index}]"

    def live(self, today: dt.date | None = None) -> bool:
        return self.expires >= (today or dt.date.today())

    def matches(self, secret: Secret) -> bool:
        if self.rule is None:
            if secret.rule.startswith(OWN_RULES):
                return False
        elif self.rule != secret.rule:
            return False
        return self.path is None or fnmatch.fnmatchcase(secret.path, self.path)

    def describe(self) -> str:
        """`allow[0] (rule private-key, path /opt/*)`: the entry, for warning lines that name the file once."""
        what = ", ".join(f"{k} {v}" for k, v in (("rule", self.rule), ("path", self.path)) if v)
        return f"allow[{self.index}] ({what})"

    def as_dict(self) -> dict:
        return {"file": self.file, "entry": f"allow[{self.index}]", "rule": self.rule, "path": self.path,
                "reason": self.reason, "expires": self.expires.isoformat()}


def load_secret_allow(path: Path | None) -> list[SecretAllow]:
    """The user's secret allowlist: `allow: [{rule?, path?, reason, expires: YYYY-MM-DD}]`, each entry with a
    rule ID (`*`: any) and/or a glob over the absolute path in the image, not both "anything". A malformed
    file or entry is a UserInputError, one line naming the file and the entry."""
    if path is None:
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserInputError(f"{path}: cannot read the secret allowlist ({type(exc).__name__}{at})") from None
    entries = data.get("allow") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserInputError(f"{path}: expected a mapping with an 'allow' list (entries: rule and/or path, "
                             "reason, expires)")
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: allow[{i}]"
        if not isinstance(e, dict):
            raise UserInputError(f"{where} must be a mapping of {', '.join(ALLOW_KEYS)}")
        unknown = sorted(str(k) for k in e if k not in ALLOW_KEYS)
        if unknown:
            raise UserInputError(f"{where} has unknown key(s) {', '.join(unknown)} (keys: {', '.join(ALLOW_KEYS)})")
        for key in ("rule", "path", "reason"):
            if e.get(key) is not None and (not isinstance(e[key], str) or not e[key].strip()):
                raise UserInputError(f"{where}: {key} must be a non-empty string")
        rule = None if str(e.get("rule") or "*").strip() == "*" else e["rule"].strip()
        glob = e["path"].strip() if e.get("path") is not None else None
        if rule is None and (glob is None or not glob.strip("*/")):
            raise UserInputError(f"{where} needs a rule ID or a path glob narrower than '*'")
        if glob is not None and not glob.startswith(("/", "*")):
            raise UserInputError(f"{where}: path '{glob}' must be a glob over the absolute path in the image "
                                 "(starting with / or *)")
        if rule is not None and rule.startswith(OWN_RULES):
            raise UserInputError(f"{where}: rule {rule} is one of imagegen's own (the build host's CA, a mirror "
                                 "credential): never allowed")
        if not e.get("reason"):
            raise UserInputError(f"{where} needs a reason")
        exp = e.get("expires")
        if exp is None:
            raise UserInputError(f"{where} needs expires (YYYY-MM-DD)")
        if isinstance(exp, str):
            try:
                exp = dt.date.fromisoformat(exp.strip())
            except ValueError:
                raise UserInputError(f"{where}: expires '{exp}' is not a date (YYYY-MM-DD)") from None
        if isinstance(exp, dt.datetime):
            exp = exp.date()
        if not isinstance(exp, dt.date):
            raise UserInputError(f"{where}: expires must be a date (YYYY-MM-DD)")
        out.append(SecretAllow(str(path), i, e["reason"].strip(), exp, rule, glob))
    return out


def expired_allows(entries: Iterable[SecretAllow], today: dt.date | None = None) -> list[SecretAllow]:
    """Entries past their expiry date: they no longer allow anything."""
    return [a for a in entries if not a.live(today)]


def unused_allows(found: Sequence[Sequence[Secret]], entries: Iterable[SecretAllow],
                  today: dt.date | None = None) -> list[SecretAllow]:
    """Live entries that match no finding in any of `found` (the secret findings of each scanned image);
    none when no image was scanned."""
    if not found:
        return []
    return [a for a in entries if a.live(today) and not any(a.matches(s) for secs in found for s in secs)]


def parse_secrets(data: dict, allow: list[dict], user: Sequence[SecretAllow] = (),
                  today: dt.date | None = None) -> list[Secret]:
    """trivy's JSON report -> secret findings, each allowed by the first entry of `allow` (imagegen's own list:
    dicts with rule, path, reason) or else of the live entries of `user` that covers it; a finding only an
    expired user entry covers is not allowed, and names that entry (`expired_allow`)."""
    found = []
    for res in data.get("Results") or []:
        for s in res.get("Secrets") or []:
            sec = Secret(rule=s.get("RuleID", "?"), title=s.get("Title", ""), severity=s.get("Severity", "UNKNOWN"),
                         path="/" + str(res.get("Target", "")).lstrip("/"), line=int(s.get("StartLine") or 0))
            for a in allow:
                if a.get("rule") in (sec.rule, "*") and fnmatch.fnmatchcase(sec.path, a["path"]):
                    sec.allowed, sec.allowed_by = a["reason"], "imagegen/data/secrets-allow.yaml"
                    break
            for u in user if sec.allowed is None else ():
                if u.matches(sec):
                    if u.live(today):
                        sec.allowed, sec.allowed_by = u.reason, u.entry
                        break
                    sec.expired_allow = sec.expired_allow or f"{u.entry} (expired {u.expires})"
            if sec.allowed is not None:
                sec.expired_allow = None
            found.append(sec)
    return found
