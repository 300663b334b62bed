"""Ray nodes that register as 127.0.0.1 and listen only there: a local search, and a multi-node cluster on one machine.

Ray turns a loopback node address (``127.0.0.1``, ``localhost``) into the machine's interface address
(``ray._private.services.resolve_ip_for_localhost``), both in ``ray start --node-ip-address`` and in ``ray.init``;
its processes then listen on that interface, reachable from the network. :func:`pin_loopback` makes that function
keep loopback addresses as they are, for the calling process. Nodes started through :func:`main` (Ray's own CLI
with the pin applied) and a driver that calls :func:`pin_loopback` before ``ray.init`` form a cluster whose head,
workers and driver all register as 127.0.0.1.

:class:`LoopbackCluster` starts a head and worker nodes as separate real processes (``ray start --block``, each in
its own process group so that stopping it stops every process it started, agents included), each worker with its own
custom resource so that work can be steered to it and the node found again. Separately started nodes share the
cluster's auth token through ``RAY_AUTH_MODE=token`` and a test-local ``RAY_AUTH_TOKEN_PATH``. :class:`MlflowServer`
is a real ``mlflow server`` on 127.0.0.1 that can be stopped and started again on the same port and store.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def is_loopback(address: str | None) -> bool:
    """True for ``127.x.y.z[:port]``, ``localhost[:port]`` and ``[::1]``."""
    host = (address or "").rsplit(":", 1)[0] if (address or "").count(":") == 1 else (address or "")
    host = host.strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def pin_loopback() -> None:
    """Keep loopback node addresses as given in this process (see the module docstring)."""
    from ray._private import services

    services.resolve_ip_for_localhost = _keep_host


def _keep_host(host: str) -> str:
    if not host:
        raise ValueError(f"malformed host: {host!r}")
    return host


def main(argv: list[str] | None = None) -> int:
    """``python -m autoside.tune.loopback start ...``: Ray's CLI with loopback addresses kept."""
    pin_loopback()
    from ray.scripts.scripts import cli

    return cli.main(args=sys.argv[1:] if argv is None else argv, prog_name="ray", standalone_mode=True) or 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` process; its pid is also its process group id."""

    name: str
    process: subprocess.Popen
    resources: dict[str, float]

    def pids(self) -> list[int]:
        """Every live process in the node's process group (raylet, agents, workers, ...)."""
        from autoside.tune.reaper import process_group

        return process_group(self.process.pid)

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/exe").resolve().name == "raylet":
                    return pid
            except OSError:
                continue
        return None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the node's process group, then SIGKILL whatever is left after ``grace_s``."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not self.pids():
                    return
                time.sleep(0.2)
        self.process.poll()


@dataclass
class LoopbackCluster:
    """A Ray head (no CPUs: it only schedules) and worker nodes on 127.0.0.1, started as real processes.

    Use as a context manager; ``address`` is what a driver passes to ``ray.init`` (after :func:`pin_loopback`) or to
    ``autoside search --address``. :meth:`env` is the environment every process of the cluster needs.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    # Ray's session folder holds Unix sockets, whose paths may not exceed 107 bytes: a short folder of its own.
    ray_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="autoside-ray-")))

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        token = self.workdir / "auth_token"
        if not token.exists():
            token.parent.mkdir(parents=True, exist_ok=True)
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def _start(self, name: str, args: list[str], resources: dict[str, float], cwd: Path) -> Node:
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the node's process keeps it open
        process = subprocess.Popen(
            [sys.executable, "-m", "autoside.tune.loopback", "start", "--block", "--disable-usage-stats", *args],
            cwd=cwd,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        node = Node(name, process, resources)
        self.nodes.append(node)
        return node

    def start_head(self) -> Node:
        args = ["--head", "--node-ip-address", LOOPBACK, "--port", str(self.port), "--num-cpus", "0"]
        args += ["--include-dashboard", "false", "--temp-dir", str(self.ray_dir)]
        return self._start("head", args, {}, self.workdir / "head")

    def add_worker(self, name: str, *, num_cpus: int = 1, attempts: int = 2) -> Node:
        """A worker node with the custom resource ``{name: 1}`` and a working directory of its own, started and
        waited for; started again if it gives up during start-up (Ray allows a raylet 30 s to register, which a
        loaded machine can exceed)."""
        resources = {name: 1.0}
        args = ["--address", self.address, "--node-ip-address", LOOPBACK, "--num-cpus", str(num_cpus)]
        args += ["--resources", json.dumps(resources)]
        expected = sum(1 for n in self.nodes if n.process.poll() is None) + 1
        for attempt in range(attempts):
            node = self._start(name, args, resources, self.workdir / name)
            try:
                self.wait_for_nodes(expected)
                return node
            except RuntimeError:
                if node.process.poll() is None or attempt == attempts - 1:
                    raise
                node.stop()
                self.nodes.remove(node)
        raise AssertionError("unreachable")

    def wait_for_nodes(self, count: int, timeout_s: float = 90.0) -> None:
        """Block until ``count`` nodes are alive in the cluster (checked from a short-lived process)."""
        probe = (
            "import ray, sys; from autoside.tune.loopback import pin_loopback; pin_loopback(); "
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
            "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= int(sys.argv[1]) else 3)"
        )
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [n.name for n in self.nodes if n.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"nodes {dead} exited" if dead else f"{count} nodes not up after {timeout_s:.0f}s"
                raise RuntimeError(f"Ray cluster on {self.address}: {why}; node logs:\n{self.logs()}")
            try:
                done = subprocess.run(
                    [sys.executable, "-c", probe, str(count)], env=self.env(), capture_output=True, timeout=30
                )
                if done.returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1.0)

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for node in self.nodes:
            text = (self.workdir / f"{node.name}.log").read_text(errors="replace")
            parts.append(f"--- {node.name}: ...{text[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, then the head
            node.stop()
        shutil.rmtree(self.ray_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts, stopped by the process group it was started in and
    restartable on the same port and store."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import urllib.request

        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        cmd += ["--artifacts-destination", str(self.folder / "art")]
        with open(self.folder / "server.log", "ab") as log:
            # No job runner: its seven worker processes would compete with the trials for two cores.
            env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            self.process = subprocess.Popen(
                cmd, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server on {self.uri} did not start:\n{log}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


if __name__ == "__main__":
    sys.exit(main())
