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
"""

from __future__ import annotations

import os
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

    def __init__(self, data_size_mb: int | None = None) -> None:
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

    def start(self, timeout: float = 60) -> "SecondEngine":
        if self.data_size_mb and not self._mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.data_size_mb}m", "tmpfs", str(self.data)],
                           check=True, capture_output=True)
            self._mounted = True
        if not self._bridge_made:
            subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True,
                           capture_output=True)
            self._bridge_made = True
            subprocess.run(["ip", "addr", "add", "10.231.77.1/24", "dev", self.bridge], check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
            for rule in self._nat_rules():
                subprocess.run(["iptables", "-w", *rule[0], "-I" if rule[1] else "-A", *rule[2]], check=True,
                               capture_output=True)
        argv = [shutil.which("dockerd") or "dockerd", "--data-root", str(self.data),
                "--exec-root", str(self.root / f"x{self._starts}"), "--pidfile", str(self.root / "pid"), "-H", self.host,
                f"--bridge={self.bridge}", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
                "--storage-driver=overlay2"]
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

    SUBNET = "10.231.77.0/24"

    def _nat_rules(self) -> list[tuple[list[str], bool, list[str]]]:
        """(table args, insert?, rule) for this engine's subnet: NAT out, and forwarding both ways."""
        return [
            (["-t", "nat"], False, ["POSTROUTING", "-s", self.SUBNET, "!", "-o", self.bridge, "-j", "MASQUERADE"]),
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
        shutil.rmtree(self.root, ignore_errors=True)
        if self._bridge_made:
            for table, _insert, rule in self._nat_rules():
                subprocess.run(["iptables", "-w", *table, "-D", *rule], capture_output=True)
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
            self._bridge_made = False
