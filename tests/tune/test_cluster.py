"""Ray on loopback: a local search listens only on 127.0.0.1, and a search runs across a head and two worker nodes
started as real processes, tracked by a real MLflow tracking server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoside.testing import tiny_search_recipe
from autoside.tune.loopback import LoopbackCluster, free_port, is_loopback
from autoside.tune.reaper import descendants

pytestmark = [pytest.mark.ray]

SPACE = {"name": "tiny", "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}}}
RECIPE = tiny_search_recipe(train=96, val=32, test=32)


def _listening(pids: set[int]) -> set[str]:
    """The local addresses that ``pids`` accept TCP connections on (from /proc/net/tcp{,6} and their sockets)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            if width == 8:
                addresses.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


def _is_loopback_listen(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


def test_loopback_addresses():
    assert is_loopback("127.0.0.1:6379") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("auto") and not is_loopback("10.0.0.5:6379") and not is_loopback("ray://head:10001")


def test_local_cluster_registers_and_listens_on_loopback_only():
    import ray

    from autoside.tune.driver import connect_ray

    assert connect_ray(None)
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        listening = _listening(descendants({os.getpid()}) - {os.getpid()})
        assert listening, "found no listening socket of the local Ray cluster"
        assert all(_is_loopback_listen(a) for a in listening), listening
    finally:
        ray.shutdown()


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts, stopped by the process group it was started in and
    restartable on the same port and store."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None
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
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server.uri
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head and two worker nodes (custom resources ``w1``, ``w2``) as real processes on 127.0.0.1."""
    with LoopbackCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        cluster.start_head()
        time.sleep(2)
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        probe = (
            "import json, ray; from autoside.tune.loopback import pin_loopback; pin_loopback(); "
            f"ray.init(address={cluster.address!r}, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] "
            "for k in ('w1', 'w2') if k in n['Resources']}))"
        )
        done = subprocess.run([sys.executable, "-c", probe], env=cluster.env(), capture_output=True, text=True)
        cluster.node_of = json.loads(done.stdout.strip().splitlines()[-1])
        assert set(cluster.node_of) == {"w1", "w2"}
        yield cluster


def _search_cmd(tmp_path: Path, cluster: LoopbackCluster, name: str, tracking_uri: str | None) -> list[str]:
    import yaml

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    cmd = [sys.executable, "-m", "autoside.cli", "search", str(tmp_path / "space.yaml"), str(tmp_path / "recipe.yaml")]
    cmd += ["--num-samples", "4", "--max-concurrent", "2", "--name", name, "--address", cluster.address]
    cmd += ["--root", str(tmp_path / "driver"), "--quiet"]
    return cmd + (["--tracking-uri", tracking_uri] if tracking_uri else [])


def _trial_runs(tracking_uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _records(root: Path, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / name / "trials").glob("*/result.json"))]


@pytest.mark.slow
def test_search_runs_across_two_worker_nodes(tmp_path: Path, cluster: LoopbackCluster, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    workdir = tmp_path / "driver"
    workdir.mkdir()
    cmd = _search_cmd(tmp_path, cluster, "mn", mlflow_server)
    run = subprocess.run(cmd, cwd=workdir, env=cluster.env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    records = _records(workdir, "mn")
    assert [r["status"] for r in records] == ["ok"] * 4
    assert {r["node_id"] for r in records} == set(cluster.node_of.values())  # both worker nodes ran trials

    client = MlflowClient(mlflow_server)
    assert not client.get_experiment_by_name("mn").artifact_location.startswith("file:")
    children = _trial_runs(mlflow_server, "mn")
    # Each trial exactly once (numbers may skip a proposal that repeated a configuration already tried).
    assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == [r["number"] for r in records]
    for r in children:
        assert r.data.tags["status"] == "ok"
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["side_network"]

    # A file-based tracking store is refused once the cluster has more than one node: one line, exit 2.
    refused = subprocess.run(
        _search_cmd(tmp_path, cluster, "mn2", None), cwd=workdir, env=cluster.env(), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "mlflow server" in refused.stderr, refused.stderr[-2000:]
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_tracking_server_down_for_ten_seconds_loses_nothing(tmp_path: Path, cluster: LoopbackCluster) -> None:
    """Stop the MLflow server mid-search for ~10 s, then start it again on the same port and store: every trial's
    run arrives with its final metrics, none twice, and every trial finishes ok."""
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    workdir = tmp_path / "driver"
    workdir.mkdir()
    cmd = _search_cmd(tmp_path, cluster, "mo", server.uri)
    driver = subprocess.Popen(cmd, cwd=workdir, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not any(r.data.tags.get("status") == "running" for r in _trial_runs(server.uri, "mo")):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.5)
        server.stop()
        time.sleep(10)
        server.start()
        _, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    try:
        assert driver.returncode == 0, err.decode()[-3000:]
        assert [r["status"] for r in _records(workdir, "mo")] == ["ok"] * 4
        children = _trial_runs(server.uri, "mo")
        numbers = [r["number"] for r in _records(workdir, "mo")]
        assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == numbers
        for r in children:
            assert r.data.tags["status"] == "ok" and "val_accuracy" in r.data.metrics and r.info.status == "FINISHED"
    finally:
        server.stop()


@pytest.mark.slow
def test_trials_of_a_killed_worker_node_run_again_elsewhere(
    tmp_path: Path, cluster: LoopbackCluster, mlflow_server: str
) -> None:
    """SIGKILL one worker node's raylet while both nodes run a trial: its trial is retried (same number) on the
    other node, the search finishes, and MLflow holds every trial once with a final status."""
    workdir = tmp_path / "driver"
    workdir.mkdir()
    cmd = _search_cmd(tmp_path, cluster, "mf", mlflow_server)
    driver = subprocess.Popen(cmd, cwd=workdir, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while sum(r.data.tags.get("status") == "running" for r in _trial_runs(mlflow_server, "mf")) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, "two trials never ran at once"
            time.sleep(0.5)
        w1 = next(n for n in cluster.nodes if n.name == "w1")
        os.kill(w1.raylet_pid(), signal.SIGKILL)
        _, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err.decode()[-3000:]
    records = _records(workdir, "mf")
    assert [r["status"] for r in records] == ["ok"] * 4
    assert max(r["restarts"] for r in records) == 1  # the killed node's trial ran a second time
    assert {r["node_id"] for r in records if r["restarts"]} == {cluster.node_of["w2"]}
    children = _trial_runs(mlflow_server, "mf")
    assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == [r["number"] for r in records]
    assert {r.data.tags["status"] for r in children} == {"ok"}
