"""A real Ray cluster for the tests: a head and worker nodes as `ray start --block` subprocesses on
a loopback address, each with free ports of its own, token authentication on, a short temp dir
under the test's tmp (Unix socket paths are limited to 107 bytes) and little memory. Torn down by
killing the process groups it started, never with `ray stop` (that ends every Ray on the host).

The address is 127.0.0.2, still loopback: Ray rewrites a bootstrap address of 127.0.0.1 into the
machine's network address, where a node bound to 127.0.0.1 cannot be reached."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
from support import PYTHON

RAY = str(Path(PYTHON).parent / "ray")
HOST = "127.0.0.2"
START_TIMEOUT_S = 120.0
OBJECT_STORE_BYTES = 80 * 1000 * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """The head (no workstream slots: harnesses go to worker nodes) and worker nodes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.started_s = 0.0

    def start(self, slots: int) -> None:
        t0 = time.monotonic()
        self._node("head", {"aidp_ws": 0}, head=True)
        self.add_node("w", {"aidp_ws": slots})
        self.started_s = time.monotonic() - t0

    def add_node(self, name: str, resources: dict[str, int]) -> subprocess.Popen[bytes]:
        """A worker node offering `resources`; returns once the cluster counts them."""
        node = self._node(name, resources, head=False)
        self._wait_for(resources)
        return node

    def _node(self, name: str, resources: dict[str, int], head: bool) -> subprocess.Popen[bytes]:
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        argv = [
            RAY,
            "start",
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={HOST}",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--resources={json.dumps(resources)}",
            f"--temp-dir={self.tmp / name}",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]
        if head:
            argv += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            argv += [f"--address={self.address}"]
        out = (self.tmp / f"{name}.out").open("wb")
        node = subprocess.Popen(
            argv,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.nodes.append(node)
        return node

    def _wait_for(self, resources: dict[str, int]) -> None:
        """Until `ray status`-like totals show the resources (asked through the CLI's Python)."""
        probe = (
            "import json, sys, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            "print(json.dumps(ray.cluster_resources()))\n"
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            out = subprocess.run(
                [PYTHON, "-c", probe],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                check=False,
            )
            if out.returncode == 0:
                total = json.loads(out.stdout.strip().splitlines()[-1])
                if all(total.get(name, 0) >= amount for name, amount in resources.items()):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the Ray cluster did not offer {resources}: {out.stderr[-2000:]}")
            time.sleep(0.5)

    def raylet_of(self, node: subprocess.Popen[bytes]) -> psutil.Process:
        """The raylet process of a node this cluster started."""
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                if os.getpgid(proc.pid) == node.pid and "raylet" in (proc.info["name"] or ""):
                    return proc
            except (ProcessLookupError, psutil.Error):
                continue
        raise AssertionError(f"no raylet in the process group {node.pid}")

    def stop(self) -> None:
        """SIGKILL every process group this cluster started (and nothing else)."""
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
