"""A second, private Docker engine for fault tests: its own dockerd, socket, exec root, data root
(optionally on a small tmpfs, to fill the disk) and its own bridge interface. The user's engine is
never stopped or touched.

The private bridge matters: a dockerd started with `--bridge=none` deletes the default `docker0`
interface at start-up, which is the user's engine's bridge (every container run there then fails
with "could not find bridge docker0"). So this engine gets a bridge of its own, created here and
deleted in `close()`. Its containers reach the package mirrors (the sysroot step runs apt) through
three iptables rules of its own (masquerade and forward for its subnet only), also removed in
`close()`; dockerd itself runs with `--iptables=false`, so it never touches the user's chains.

Needs root (dockerd) — the test suite's setup runs as root — and Debian's docker.io.

A *newer* engine than the host's comes from a root filesystem (`rootfs`, e.g. Debian 13's docker.io
26.1.5 bootstrapped by `newer_engine_rootfs`), optionally on the containerd image store. Its dockerd
runs in a private mount namespace (`unshare --mount --propagation private`) whose root is the rootfs,
entered with `pivot_root`, not `chroot`: under a chroot, `docker run` works but every `docker exec`
fails with `chdir to cwd ("/home/app") set in config.json failed: no such file or directory` (runc's
exec joins the container's mount namespace from a process whose root is not its namespace's root;
measured here). runc also needs the new root to be a mount point, so it is bind-mounted onto itself.
The host's /tmp is bind-mounted in, so the engine's socket, data root and exec root (all under
`self.root` in /tmp) and the image tests' bind-mounted work directories have the same paths inside
and out. Networking is the same private bridge as above: never `--bridge=none` in the host's network
namespace, which deletes the user's docker0.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker


class SecondEngine:
    """One throw-away dockerd. `host` is the DOCKER_HOST value for it.

    data_size_mb: put the data root on a tmpfs of that size (decimal MB) so a build can fill it.
    """

    def __init__(self, data_size_mb: int | None = None, *, rootfs: Path | None = None,
                 containerd_store: bool = False, subnet: int = 77) -> None:
        # short paths: containerd's socket under the exec root must fit a unix socket path
        self.root = Path(tempfile.mkdtemp(prefix="ig-eng-", dir="/tmp"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.data_size_mb = data_size_mb
        self.sock = self.root / "d.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "dockerd.log"
        self._mounted = False
        self._starts = 0
        self.bridge = "igt" + os.urandom(5).hex()  # interface names are at most 15 characters
        self._bridge_made = False
        self.rootfs = rootfs
        self.containerd_store = containerd_store
        self.subnet = f"10.231.{subnet}.0/24"
        self.gateway = f"10.231.{subnet}.1/24"

    def start(self, timeout: float = 60) -> "SecondEngine":
        if self.data_size_mb and not self._mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.data_size_mb}m", "tmpfs", str(self.data)],
                           check=True, capture_output=True)
            self._mounted = True
        if not self._bridge_made:
            subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True,
                           capture_output=True)
            self._bridge_made = True
            subprocess.run(["ip", "addr", "add", self.gateway, "dev", self.bridge], check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
            for rule in self._nat_rules():
                subprocess.run(["iptables", "-w", *rule[0], "-I" if rule[1] else "-A", *rule[2]], check=True,
                               capture_output=True)
        argv = [shutil.which("dockerd") or "dockerd", "--data-root", str(self.data),
                "--exec-root", str(self.root / f"x{self._starts}"), "--pidfile", str(self.root / "pid"), "-H", self.host,
                f"--bridge={self.bridge}", "--iptables=false", "--ip-masq=false", "--ip6tables=false"]
        if self.containerd_store:  # Docker 29's default on fresh installs; its snapshotter replaces the graph driver
            config = self.root / "daemon.json"
            config.write_text(json.dumps({"features": {"containerd-snapshotter": True}}))
            argv += ["--config-file", str(config)]
        else:
            argv.append("--storage-driver=overlay2")
        if self.rootfs is not None:
            argv = self._in_rootfs(["dockerd", *argv[1:]])
        self._starts += 1  # a fresh exec root per start: a killed containerd leaves its socket behind
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"second dockerd exited {self.proc.returncode}: {self.log.read_text()[-800:]}")
            try:
                self.client().ping()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError(f"second dockerd did not answer within {timeout}s: {self.log.read_text()[-800:]}")

    def _in_rootfs(self, argv: list[str]) -> list[str]:
        """`argv` run with the rootfs as `/` of a private mount namespace (see the module docstring)."""
        r = shlex.quote(str(self.rootfs))
        inner = "umount -l /.oldroot && exec " + shlex.join(argv)
        script = "\n".join([
            "set -e",
            f"mount --bind {r} {r}",
            f"mount --rbind /dev {r}/dev",
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /sys {r}/sys",
            f"mount -t tmpfs tmpfs {r}/run",
            f"mount --bind /tmp {r}/tmp",
            f"mkdir -p {r}/.oldroot",
            f"cd {r}",
            "pivot_root . .oldroot",
            "exec /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c " + shlex.quote(inner),
        ])
        return ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]

    def _nat_rules(self) -> list[tuple[list[str], bool, list[str]]]:
        """(table args, insert?, rule) for this engine's subnet: NAT out, and forwarding both ways."""
        return [
            (["-t", "nat"], False, ["POSTROUTING", "-s", self.subnet, "!", "-o", self.bridge, "-j", "MASQUERADE"]),
            ([], True, ["FORWARD", "-i", self.bridge, "-j", "ACCEPT"]),
            ([], True, ["FORWARD", "-o", self.bridge, "-j", "ACCEPT"]),
        ]

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=120)

    def kill(self) -> None:
        """Stop the engine the hard way (its containerd too), as a crash or an OOM kill would."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None
        # the shims of running containers outlive dockerd: end them too
        subprocess.run(["pkill", "-KILL", "-f", str(self.root)], capture_output=True)
        time.sleep(0.5)

    def load_from(self, main: docker.DockerClient, refs: list[str]) -> None:
        """Copy images from the user's engine (read-only there: `docker save`) into this one."""
        for ref in refs:
            data = main.images.get(ref).save(named=True)
            self.client().images.load(b"".join(data))

    def close(self) -> None:
        self.kill()
        for _ in range(3):
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(self.root))]
            for mp in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            if not mounts:
                break
        # a step a killed engine's BuildKit was running can write on for a moment after the kill: retry
        for _ in range(10):
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists():
                break
            time.sleep(1)
        if self._bridge_made:
            for table, _insert, rule in self._nat_rules():
                subprocess.run(["iptables", "-w", *table, "-D", *rule], capture_output=True)
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
            self._bridge_made = False


#: Debian 13's engine: docker.io 26.1.5, containerd 1.7.24, docker-buildx 0.13.1 (../shared/FACTS.md)
NEWER_ENGINE = {"suite": "trixie", "mirror": "http://deb.debian.org/debian",
                "packages": ["docker.io", "docker-buildx", "containerd", "runc", "iptables", "ca-certificates"]}


def newer_engine_rootfs() -> Path:
    """A Debian 13 root filesystem with its Docker engine (about 420 MB, 20 s with mmdebstrap), kept
    under $IMAGEGEN_CACHE/testengines/ for the next run (keyed by suite, mirror and packages)."""
    import hashlib

    from imagegen import paths

    key = hashlib.sha256(json.dumps(NEWER_ENGINE, sort_keys=True).encode()).hexdigest()[:12]
    dest = paths.cache_root() / "testengines" / f"{NEWER_ENGINE['suite']}-docker-{key}"
    if (dest / "usr" / "sbin" / "dockerd").exists():
        return dest
    tmp = dest.with_name(f"{dest.name}.part{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mmdebstrap", "--variant=minbase", "--include=" + ",".join(NEWER_ENGINE["packages"]),
                          NEWER_ENGINE["suite"], str(tmp), NEWER_ENGINE["mirror"]],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"mmdebstrap of the newer engine failed: {res.stderr.strip()[-600:]}")
    tmp.rename(dest)
    return dest
