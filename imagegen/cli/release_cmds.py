"""Release commands: scan (trivy), publish (push, digest check, aliases), ci matrix."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..console import err, out, warn
from ..errors import GateFailed, UserInputError
from . import userpaths
from .app import AllOpt, JsonOpt, MatrixOpt, VariantOpt, app, select_cells

FailOnOpt = Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 if a vulnerability not ignored is at "
                                                  "this severity or above (LOW, MEDIUM, HIGH, CRITICAL).")]
IgnoreFileOpt = Annotated[Optional[Path], typer.Option("--ignore-file", help="YAML `ignore: [{id, reason, expires: "
                                                       "YYYY-MM-DD, package?}]`; an expired entry fails the scan.",
                                                       callback=userpaths.input_file)]
IgnoreUnfixedOpt = Annotated[bool, typer.Option("--ignore-unfixed", help="Only vulnerabilities with a fix.")]
SecretAllowOpt = Annotated[Optional[Path], typer.Option("--secret-allow", help="YAML `allow: [{rule and/or path "
                                                        "(glob), reason, expires: YYYY-MM-DD}]`: secret findings "
                                                        "you accept; an expired entry allows nothing.",
                                                        callback=userpaths.input_file)]
NoVulnOpt = Annotated[bool, typer.Option("--no-vuln", help="SBOM and secret scan only (no vulnerability DB at hand).")]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="trivy's cache (a pre-seeded DB lives in "
                                                     "DIR/db/trivy.db).", callback=userpaths.output_dir)]
SkipDbUpdateOpt = Annotated[bool, typer.Option("--skip-db-update", help="Use the DB in --cache-dir; never "
                                               "download it.")]
OfflineScanOpt = Annotated[bool, typer.Option("--offline-scan", help="No network at all during the scan.")]
DbRepositoryOpt = Annotated[Optional[str], typer.Option("--db-repository", help="OCI mirror of trivy's DB "
                                                        "(default ghcr.io/aquasecurity/trivy-db).")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Same as --skip-db-update --offline-scan.")]
DbMaxAgeOpt = Annotated[int, typer.Option("--db-max-age", min=1, max=3650, help="Warn (scan report: vuln_db) "
                                          "when the vulnerability DB is this many days old or past its NextUpdate.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="Where the SBOMs (sbom-<cell>.cdx.json) and scan "
                                          "reports (scan-<cell>.json) go.", callback=userpaths.output_dir)]


@app.command()
def scan(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    fail_on: FailOnOpt = None,
    ignore_file: IgnoreFileOpt = None,
    ignore_unfixed: IgnoreUnfixedOpt = False,
    secret_allow: SecretAllowOpt = None,
    no_vuln: NoVulnOpt = False,
    cache_dir: CacheDirOpt = None,
    skip_db_update: SkipDbUpdateOpt = False,
    offline_scan: OfflineScanOpt = False,
    db_repository: DbRepositoryOpt = None,
    offline: OfflineOpt = False,
    db_max_age: DbMaxAgeOpt = 30,
    reports: ReportsOpt = Path("reports"),
    json_out: JsonOpt = False,
) -> None:
    """Per cell: CycloneDX SBOM, secret scan (must be clean), vulnerability scan (trivy, through plumbum)."""
    from .. import trivy

    if fail_on:
        fail_on = fail_on.upper()
        if fail_on not in trivy.SEVERITIES:
            raise UserInputError(f"--fail-on takes one of {', '.join(trivy.SEVERITIES[1:])}")
    if db_repository is not None and not trivy.valid_repository(db_repository):
        raise UserInputError(f"--db-repository '{db_repository}' is not an OCI repository reference (lowercase)")
    ignores = trivy.load_ignores(ignore_file)
    allows = trivy.load_secret_allow(secret_allow)
    m, cells = select_cells(matrix, variant, all_)
    trivy.locate()  # one clear line when trivy is missing, before anything is saved
    opts = trivy.Options(cache_dir=cache_dir, skip_db_update=skip_db_update or offline,
                         offline_scan=offline_scan or offline, db_repository=db_repository, max_db_age=db_max_age)
    old = trivy.expired_allows(allows)
    if old:
        warn(f"{len(old)} secret allow entr{'y' if len(old) == 1 else 'ies'} in {secret_allow} expired and allow "
             "nothing (scan reports: secret_allow_expired): " + ", ".join(f"{a.describe()} expired {a.expires}"
                                                                         for a in old))
    results = []
    for c in cells:
        err.print(f"scanning {c.ref}", markup=False)
        r = trivy.scan_cell(c, reports, opts, vuln=not no_vuln, ignores=ignores, ignore_unfixed=ignore_unfixed,
                            secret_allow=allows)
        (reports / f"scan-{c.id}.json").write_text(json.dumps(r.as_dict(), indent=2) + "\n")
        for w in r.warnings:
            warn(w)
        results.append(r)
    _warn_unused(results, ignores, ignore_file, allows, secret_allow)
    if json_out:
        out.print_json(data=[r.as_dict() for r in results])
    else:
        _print_scan_table(results)
    problems = [p for r in results for p in r.problems]
    for p in problems[1:]:
        err.print(f"error: {p}", markup=False, style="red")
    if problems:
        raise GateFailed(problems[0])
    trivy.gate([r.vulns for r in results if r.vulns], fail_on, ignores)


def _warn_unused(results, ignores, ignore_file, allows, secret_allow) -> None:
    """Ignore and secret-allow entries that matched nothing: a warning each (also in the scan reports)."""
    from .. import trivy

    unused = trivy.unused_ignores([r.vulns for r in results if r.vulns], ignores)
    if unused:
        warn(f"{len(unused)} ignore entr{'y' if len(unused) == 1 else 'ies'} in {ignore_file} matched no finding "
             "(scan reports: unused_ignores): " + ", ".join(i.id + (f" ({i.package})" if i.package else "")
                                                           for i in unused))
    unused_allows = trivy.unused_allows([r.secrets for r in results], allows)
    if unused_allows:
        warn(f"{len(unused_allows)} secret allow entr{'y' if len(unused_allows) == 1 else 'ies'} in {secret_allow} "
             "matched no secret finding (scan reports: secret_allow_unused): "
             + ", ".join(a.describe() for a in unused_allows))


def _print_scan_table(results) -> None:
    from .. import trivy

    table = Table(box=None, header_style="bold")
    for col in ("image", "os", "deb", "pypi", "secrets", *reversed(trivy.SEVERITIES), "sbom"):
        table.add_column(col)
    for r in results:
        sev = [str(r.vulns.count(s)) if r.vulns else "-" for s in reversed(trivy.SEVERITIES)]
        bad = sum(1 for s in r.secrets if not s.allowed)
        allowed = len(r.secrets) - bad
        table.add_row(r.image, r.sbom.os or "none", str(r.sbom.count("deb")), str(r.sbom.count("pypi")),
                      f"{bad}" + (f" (+{allowed} allowed)" if allowed else ""), *sev, str(r.sbom.path))
    out.print(table)


@app.command()
def publish(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    all_: AllOpt = False,
    registry: Annotated[Optional[str], typer.Option("--registry", help="Override the matrix's registry "
                                                    "(host[:port]; loopback registries are spoken to over http).")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="Override the matrix's namespace "
                                                     "(lowercase).")] = None,
    alias: Annotated[Optional[list[str]], typer.Option("--alias", help="An extra alias tag for every selected "
                                                       "cell (repeatable), besides the matrix's.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show what would be pushed; touch no "
                                                           "registry.")] = False,
    skip_test_check: Annotated[bool, typer.Option("--skip-test-check", help="Publish an image without a passing "
                                                  "test record (said on stderr and in the report); never "
                                                  "replaces a tag.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a released immutable tag that holds another "
                                          "image (said on stderr; the report keeps the old digest).")] = False,
    allow_alias_downgrade: Annotated[bool, typer.Option("--allow-alias-downgrade", help="Move an alias even when "
                                                        "the registry's target is a newer version.")] = False,
    force: Annotated[bool, typer.Option("--force", hidden=True, help="Removed: use --skip-test-check and/or "
                                        "--replace.")] = False,
    retries: Annotated[int, typer.Option("--retries", min=0, max=20, help="Retries after a transient failure "
                                         "(5xx, 429, reset, timeout) of the push or of a registry request; no "
                                         "retry starts more than 120 s after the first try; a 429 waits its "
                                         "Retry-After, or at least 10 s.")] = 3,
    retry_backoff: Annotated[float, typer.Option("--retry-backoff", min=0.0, max=30.0, help="First retry delay "
                                                 "in seconds; doubles each retry (at most 30 s).")] = 1.0,
    report: Annotated[Path, typer.Option("--report", help="Where to write the publish report (JSON).",
                                         callback=userpaths.output_file)]
    = Path("reports/publish.json"),
    no_sbom: Annotated[bool, typer.Option("--no-sbom", help="Do not attach the SBOM (it needs trivy).")] = False,
    no_provenance: Annotated[bool, typer.Option("--no-provenance", help="Do not attach the SLSA provenance.")]
    = False,
    sign_key: Annotated[Optional[Path], typer.Option("--sign-key", help="Sign each pushed image with this "
                                                     "unencrypted PEM ECDSA P-256 key, stored as cosign stores "
                                                     "signatures (sha256-<hex>.sig).",
                                                     callback=userpaths.input_file)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Push tested cells and their aliases; verify the registry's digest; attach the SBOM and the SLSA
    provenance to it (OCI referrers, or sha256-<hex>.<kind> tags where the registry has no referrers API).
    Credentials: REGISTRY_USER/REGISTRY_TOKEN or docker login."""
    from .. import publish as publish_mod
    from ..registry import RetryPolicy

    if force:
        raise UserInputError("--force is gone: --skip-test-check publishes without a passing test record, --replace "
                             "replaces an immutable tag holding another image")
    m, cells = select_cells(matrix, variant, all_)
    targets = publish_mod.plan(cells, registry=registry, namespace=namespace, extra_aliases=alias)
    evidence = tuple(k for k, off in (("sbom", no_sbom), ("provenance", no_provenance)) if not off)
    key = None
    if sign_key is not None:
        from ..signing import load_private_key

        key = load_private_key(sign_key)
    done = publish_mod.publish(targets, skip_test_check=skip_test_check, replace=replace,
                               allow_alias_downgrade=allow_alias_downgrade, dry_run=dry_run, evidence=evidence,
                               sign_key=key,
                               retry=RetryPolicy(attempts=retries + 1, backoff=retry_backoff), report=report)
    if json_out:
        import dataclasses

        out.print_json(data=[dataclasses.asdict(p) for p in done])
        return
    for p in done:
        line = f"{p.ref}@{p.digest}" if p.digest else f"{p.ref}  (dry run)"
        out.print(line + "".join(f"\n  alias {a.ref}" + ("" if a.action == "moved" or dry_run else f"  ({a.action}"
                                 + (f": {a.reason}" if a.reason else "") + ")") for a in p.aliases), markup=False)
    if not dry_run:
        err.print(f"wrote {report}", markup=False)


# --- ci ---

ci_app = typer.Typer(help="Continuous integration helpers.", no_args_is_help=True)
app.add_typer(ci_app, name="ci")


@ci_app.command("matrix")
def ci_matrix(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Only cells of this device (cpu, gpu).")] = None,
    github_output: Annotated[bool, typer.Option("--github-output", help="Also append matrix=<json> and count=<n> "
                                                "to the file named by $GITHUB_OUTPUT.")] = False,
) -> None:
    """GitHub Actions strategy.matrix JSON (one entry per active cell; runners from the matrix's `ci:` block)."""
    from .. import ci

    if device is not None and device not in ("cpu", "gpu"):
        raise UserInputError(f"--device takes cpu or gpu, not '{device}'")
    m, cells = select_cells(matrix, variant, False, need_one=False)
    for c in ci.unbuildable(m, cells):
        err.print(f"note: {c.ref} is not in the CI matrix: no lock file (run `imagegen lock --variant {c.ref}` "
                  "where its wheels can be resolved)", markup=False)
    data = ci.matrix(m, cells, device=device)
    if github_output:
        target = os.environ.get("GITHUB_OUTPUT")
        if not target:
            raise UserInputError("--github-output needs $GITHUB_OUTPUT (set by GitHub Actions)")
        ci.github_output(Path(target), data)
    sys.stdout.write(ci.dumps(data) + "\n")
