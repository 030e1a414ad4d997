#!/usr/bin/env python3
"""Cold build against the naive build, per Docker engine and per builder path (classic / BuildKit).

For each engine x cell x builder path, side by side in one run (these machines are noisy: compare the
ratios within a row, not seconds across rows):
  naive     bench/build_bench.py's most favourable naive build (NAIVE_PIP_ONLY: FROM the same builder
            base, COPY the same locked wheels, pip install), with no cache, through the same builder
            path: classic = docker-py `build(nocache=True)`, BuildKit = `docker buildx build --load
            --no-cache --provenance=false`.
  cold      `imagegen build --variant CELL --force --no-cache --no-test` (process start to exit);
            classic path with DOCKER_BUILDKIT=0, BuildKit path with a buildx CLI plugin available.
  no-op     `imagegen build --variant CELL --no-test` again (must be skipped; target <= 1 s). --no-test:
            the cold build ran no tests, so without it the no-op would run the test suite.
Each timing is the median of --repeat runs (naive and cold alternate within a repetition; the no-op
runs max(--repeat, 3) times, right after the last cold build of its path). Sizes are
the engines' inspect "Size" in bytes: on Docker 26's containerd store that is not the graph driver's
unpacked size (onnxruntime cpu-slim: 93 MB there, 178 MB on overlay2), so compare sizes within an engine.

Engines:
  host                 the engine this process reaches (DOCKER_HOST, else the default socket)
  docker26             Docker 26.1.5 from the Debian 13 rootfs of tests/engine/second_engine.py,
                       graph-driver store (private dockerd, subnet 10.231.97.0/24)
  docker26-containerd  the same on the containerd image store (subnet 10.231.98.0/24)
The private engines run one at a time; the cells' bases are copied into them from the host engine,
and they are removed (data root, build cache and all) when their rows are done.

BuildKit path: every engine is driven by this machine's docker CLI with the buildx plugin of the Debian 13
rootfs (`<rootfs>/usr/libexec/docker/cli-plugins/docker-buildx`), made available through a temporary
DOCKER_CONFIG; the builder is buildx's default one (the engine's embedded BuildKit). imagegen prints the
path it took on stderr; a row whose path differs from the one asked for is marked and fails the run.

Clean-up: every image is tagged under a per-run prefix (IMAGEGEN_LOCAL_PREFIX=imagegen-bench/run-<id>/
for imagegen; the naive images under the same prefix) and removed by that tag; images this run did not
tag are never touched. The host engine's BuildKit build cache is left alone (it cannot be pruned down
to this run's records only while others build there): its size before and after is logged and written
to the JSON; `docker buildx prune` reclaims it.

    python bench/engines_bench.py --engines docker26 --cells onnxruntime:1.23.2-cpu-slim
    python bench/engines_bench.py --repeat 3              # all engines, both paths, the default cells
    python bench/engines_bench.py --paths classic --cells onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-slim

Prints a Markdown table on stdout (logs on stderr) and writes --json (default bench/results-engines.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

import docker  # noqa: E402
import docker.errors  # noqa: E402
from build_bench import NAIVE_PIP_ONLY, _link, mb  # noqa: E402

from imagegen import engine as ig_engine  # noqa: E402
from imagegen import matrix, pipeline  # noqa: E402

ENGINES = ("host", "docker26", "docker26-containerd")
PATHS = ("classic", "buildkit")
DEFAULT_CELLS = ("onnxruntime:1.23.2-cpu-slim", "paddle:3.3.1-cpu-slim")
SUBNETS = {"docker26": 97, "docker26-containerd": 98}  # 10.231.N.0/24 bridges of the private engines
BUILDX_PLUGIN = Path("usr/libexec/docker/cli-plugins/docker-buildx")  # inside the Debian 13 rootfs
NOOP_MIN_RUNS = 3  # the no-op costs about a second; its first run after a build is the noisiest
MIN_FREE_GB = 10  # warn below this much free space on / before an engine's rows


def log(msg: str) -> None:
    print(f"[engines_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_gb(path: str = "/") -> float:
    return shutil.disk_usage(path).free / 1e9


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class BenchError(Exception):
    """One row's measurement failed (the message carries the failing command's last lines)."""


# --- engines --------------------------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    host: str | None  # DOCKER_HOST for it; None: the inherited environment (host engine)
    version: str = "?"
    image_store: str = "?"
    storage_driver: str = "?"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def api(self) -> docker.APIClient:
        return docker.from_env(environment=self.env(), timeout=1800).api

    def describe(self) -> None:
        api = self.api()
        info = ig_engine.describe(api.info(), api.version())
        self.version, self.image_store, self.storage_driver = info.server_version, info.image_store, info.storage_driver


@contextlib.contextmanager
def started(name: str, base_refs: list[str], rootfs: Path | None):
    """The engine `name`, ready with `base_refs`; a private one is always closed afterwards."""
    if name == "host":
        eng = Engine(name, None)
        eng.describe()
        yield eng
        return
    from second_engine import SecondEngine

    private = SecondEngine(rootfs=rootfs, containerd_store=name.endswith("-containerd"), subnet=SUBNETS[name])
    try:
        t0 = time.monotonic()
        private.start(timeout=120)
        log(f"{name}: dockerd up at {private.host} in {time.monotonic() - t0:.1f} s; loading {len(base_refs)} "
            f"base image(s) from the host engine")
        private.load_from(docker.from_env(timeout=1800), base_refs)
        eng = Engine(name, private.host)
        eng.describe()
        yield eng
    finally:
        log(f"{name}: closing the private engine (its images and build cache go with it)")
        private.close()


# --- builder paths --------------------------------------------------------------------------------


def buildx_config(rootfs: Path) -> Path:
    """A DOCKER_CONFIG directory whose cli-plugins/ holds the rootfs's docker-buildx."""
    plugin = rootfs / BUILDX_PLUGIN
    if not plugin.is_file():
        raise SystemExit(f"no buildx plugin at {plugin}")
    cfg = Path(tempfile.mkdtemp(prefix="imagegen-bench-dockercfg-"))
    (cfg / "cli-plugins").mkdir()
    shutil.copy2(plugin, cfg / "cli-plugins" / "docker-buildx")
    return cfg


def path_env(eng: Engine, path: str, cfg: Path | None, prefix: str) -> dict[str, str]:
    env = eng.env()
    env["IMAGEGEN_LOCAL_PREFIX"] = prefix
    if path == "classic":
        env["DOCKER_BUILDKIT"] = "0"
    else:
        env.pop("DOCKER_BUILDKIT", None)
        assert cfg is not None
        env["DOCKER_CONFIG"] = str(cfg)
    return env


def buildx_version(env: dict[str, str]) -> str:
    proc = subprocess.run(["docker", "buildx", "version"], env=env, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else f"unavailable: {tail(proc.stderr, 2)}"


def builder_seen(stderr: str) -> tuple[str, str]:
    """("buildkit" | "classic" | "?", the line) from imagegen's stderr."""
    for line in stderr.splitlines():
        bk, classic = "BuildKit" in line, "classic builder" in line
        if bk != classic:
            return ("buildkit" if bk else "classic"), line.strip()
        if bk and classic:
            return "?", line.strip()
    return "?", ""


# --- one measurement ------------------------------------------------------------------------------


def naive_build(eng: Engine, path: str, env: dict[str, str], ctx: Path, tag: str) -> float:
    """Seconds to build `ctx` with no cache through `path`, tagged `tag`."""
    if path == "classic":
        api = eng.api()
        t0 = time.monotonic()
        for chunk in api.build(path=str(ctx), tag=tag, rm=True, forcerm=True, nocache=True, decode=True, pull=False):
            if "error" in chunk:
                raise BenchError(f"naive classic build failed: {chunk['error'].strip()}")
        return time.monotonic() - t0
    cmd = ["docker", "buildx", "build", "--load", "--no-cache", "--provenance=false", "--progress=plain",
           "-t", tag, str(ctx)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    secs = time.monotonic() - t0
    if proc.returncode != 0:
        raise BenchError(f"naive BuildKit build failed (exit {proc.returncode}):\n{tail(proc.stderr)}")
    return secs


def imagegen_build(ref: str, env: dict[str, str], *extra: str) -> tuple[float, dict, str]:
    cmd = [sys.executable, "-m", "imagegen", "build", "--variant", ref, *extra, "--no-test", "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    secs = time.monotonic() - t0
    try:
        (res,) = json.loads(proc.stdout)
    except ValueError:
        res = {}
    if proc.returncode != 0 or res.get("status") == "failed":
        msg = res.get("message") or ""
        raise BenchError(f"`imagegen build {' '.join(cmd[5:])}` failed (exit {proc.returncode}): {msg}\n"
                         f"{tail(proc.stderr)}")
    return secs, res, proc.stderr


def remove_tag(api: docker.APIClient, ref: str) -> None:
    """Remove `ref` (a tag under this run's prefix) if present: the tag, and the image when it was its
    only name (with the untagged parents a classic build left)."""
    try:
        api.remove_image(ref)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        log(f"warning: could not remove {ref}: {ig_engine.short_error(exc)}")


def med(xs: list[float], nd: int = 1) -> float | None:
    return round(statistics.median(xs), nd) if xs else None


def bench_row(eng: Engine, cell: matrix.Cell, path: str, ctx: Path, *, cfg: Path | None, prefix: str,
              repeat: int) -> dict:
    env = path_env(eng, path, cfg, prefix)
    api = eng.api()
    naive_tag = f"{prefix}naive-{cell.id}:{path}"
    local_ref = prefix + cell.ref  # cell.local_ref in imagegen's process (IMAGEGEN_LOCAL_PREFIX=prefix)
    row: dict = {"engine": eng.name, "engine_version": eng.version, "image_store": eng.image_store,
                 "cell": cell.ref, "path": path}
    if path == "buildkit":
        row["buildx"] = buildx_version(env)
    naive_s: list[float] = []
    cold_s: list[float] = []
    noop_s: list[float] = []
    seen: set[str] = set()
    try:
        for i in range(repeat):
            remove_tag(api, naive_tag)
            naive_s.append(naive_build(eng, path, env, ctx, naive_tag))
            row["naive_bytes"] = api.inspect_image(naive_tag)["Size"]
            remove_tag(api, naive_tag)
            remove_tag(api, local_ref)  # so the cold build never times removing a superseded image
            secs, res, err = imagegen_build(cell.ref, env, "--force", "--no-cache")
            cold_s.append(secs)
            kind, line = builder_seen(err)
            seen.add(kind)
            row["builder_line"] = line
            row["cold_status"] = res.get("status")
            log(f"  {eng.name} {cell.ref} {path} #{i + 1}: naive {naive_s[-1]:.1f} s, imagegen cold {secs:.1f} s "
                f"({kind}: {line or 'no builder line on stderr'})")
        row["bytes"] = api.inspect_image(local_ref)["Size"]
        for _ in range(max(repeat, NOOP_MIN_RUNS)):
            secs, res, _err = imagegen_build(cell.ref, env)
            noop_s.append(secs)
            row["noop_status"] = res.get("status")
        log(f"  {eng.name} {cell.ref} {path}: no-op {statistics.median(noop_s):.2f} s ({row['noop_status']})")
    except (BenchError, docker.errors.APIError) as exc:
        row["error"] = str(exc)
        log(f"  {eng.name} {cell.ref} {path}: FAILED: {exc}")
    finally:
        remove_tag(api, naive_tag)
        remove_tag(api, local_ref)
    row["builder_seen"] = "/".join(sorted(seen)) or None
    row.update(naive_s=med(naive_s), cold_s=med(cold_s), noop_s=med(noop_s, 2),
               naive_runs=[round(x, 2) for x in naive_s], cold_runs=[round(x, 2) for x in cold_s],
               noop_runs=[round(x, 2) for x in noop_s])
    row["time_ratio"] = round(row["cold_s"] / row["naive_s"], 3) if row["cold_s"] and row["naive_s"] else None
    if row.get("bytes") and row.get("naive_bytes"):
        row["size_ratio"] = round(row["bytes"] / row["naive_bytes"], 3)
    row["path_mismatch"] = bool(seen) and seen != {path}
    return row


# --- host build cache (reported, never pruned) ----------------------------------------------------


def build_cache_total(env: dict[str, str]) -> str | None:
    proc = subprocess.run(["docker", "buildx", "du"], env=env, capture_output=True, text=True, check=False)
    m = re.search(r"^Total:\s*(\S+)", proc.stdout, re.MULTILINE)
    return m.group(1) if proc.returncode == 0 and m else None


# --- output ---------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    out = [("| engine | cell | path (seen) | naive build (pip only) | imagegen cold build | time ratio | "
            "no-op rebuild | naive size | imagegen size | size ratio |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seen = r.get("builder_seen") or "?"
        path = r["path"] if seen == r["path"] else f"{r['path']} (**seen: {seen}**)"
        ratio = f"{r['time_ratio']:.2f}×" if r.get("time_ratio") else "-"
        size_ratio = f"{r['size_ratio']:.2f}×" if r.get("size_ratio") else "-"
        noop = f"{r['noop_s']} s ({r.get('noop_status')})" if r.get("noop_s") is not None else "-"
        sec = lambda v: "-" if v is None else f"{v} s"  # noqa: E731
        engine = f"{r['engine']} ({r['engine_version']}, {r['image_store']})"
        line = (f"| {engine} | `{r['cell']}` | {path} | {sec(r.get('naive_s'))} | {sec(r.get('cold_s'))} | {ratio} | "
                f"{noop} | {mb(r.get('naive_bytes'))} | **{mb(r.get('bytes'))}** | {size_ratio} |")
        if r.get("error"):
            line += f" ⚠ {r['error'].splitlines()[0][:160]}"
        out.append(line)
    return "\n".join(out)


def csv_choice(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: {', '.join(bad) or 'empty'}: choose from {', '.join(allowed)}")
    return items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    ap.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="comma-separated cell selectors")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of: {', '.join(PATHS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per timing (the median is reported)")
    ap.add_argument("--matrix", default=str(ROOT / "matrix.yaml"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results-engines.json"), help="results JSON")
    args = ap.parse_args()
    engines = csv_choice(args.engines, ENGINES, "engines")
    paths = csv_choice(args.paths, PATHS, "paths")
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean-up in the finally blocks

    m = matrix.load(args.matrix)
    cells = m.select([c.strip() for c in args.cells.split(",") if c.strip()])
    if not cells:
        raise SystemExit(f"no cell matches {args.cells}")
    prefix = f"imagegen-bench/run-{uuid.uuid4().hex[:10]}/"
    work = Path(tempfile.mkdtemp(prefix="imagegen-bench-engines-"))
    cfg: Path | None = None
    rows: list[dict] = []
    meta: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeat": args.repeat, "paths": paths,
                  "prefix": prefix, "engines": {}}
    try:
        rootfs = None
        if any(e != "host" for e in engines) or "buildkit" in paths:
            from second_engine import newer_engine_rootfs

            rootfs = newer_engine_rootfs()
        if "buildkit" in paths:
            cfg = buildx_config(rootfs)
        # On the host engine, not timed: lock, bases, wheelhouse, closure; the naive contexts.
        ctxs: dict[str, Path] = {}
        base_refs: list[str] = []
        for cell in cells:
            log(f"preparing {cell.ref} (lock, bases, wheels, closure) on the host engine")
            prep = pipeline.prepare(m, cell, work / "prep")
            ctx = work / "naive" / cell.id
            ctx.mkdir(parents=True)
            shutil.copytree(prep.context / "wheels", ctx / "wheels", copy_function=_link)
            (ctx / "Dockerfile").write_text(NAIVE_PIP_ONLY.format(builder=prep.refs["builder"], py=cell.python))
            ctxs[cell.id] = ctx
            shutil.rmtree(prep.context, ignore_errors=True)
            base_refs += [r for r in prep.refs.values() if r not in base_refs]
        for name in engines:
            if free_gb() < MIN_FREE_GB:
                log(f"warning: only {free_gb():.1f} GB free on /")
            log(f"engine {name}: {free_gb():.1f} GB free on /")
            host_cache = None
            with started(name, base_refs, rootfs) as eng:
                meta["engines"][name] = {"version": eng.version, "image_store": eng.image_store,
                                         "storage_driver": eng.storage_driver}
                log(f"engine {name}: Docker {eng.version}, {eng.image_store} store ({eng.storage_driver})")
                if name == "host" and cfg is not None:
                    host_cache = build_cache_total(path_env(eng, "buildkit", cfg, prefix))
                for cell in cells:
                    for path in paths:
                        rows.append(bench_row(eng, cell, path, ctxs[cell.id], cfg=cfg, prefix=prefix,
                                              repeat=args.repeat))
                        log(f"  {free_gb():.1f} GB free on /")
                if host_cache is not None:
                    after = build_cache_total(path_env(eng, "buildkit", cfg, prefix))
                    meta["host_build_cache"] = {"before": host_cache, "after": after, "pruned": False}
                    log(f"host engine's BuildKit build cache: {host_cache} before, {after} after; left alone "
                        "(`docker buildx prune` would reclaim it, other users' records included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cfg is not None:
            shutil.rmtree(cfg, ignore_errors=True)
    Path(args.json).write_text(json.dumps({"run": meta, "rows": rows}, indent=2) + "\n")
    print(table(rows))
    bad = [r for r in rows if r.get("error") or r.get("path_mismatch")]
    for r in bad:
        log(f"{r['engine']} {r['cell']} {r['path']}: " + (r.get("error") or
            f"asked for {r['path']}, imagegen used {r['builder_seen']} ({r.get('builder_line')!r})"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
