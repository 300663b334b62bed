"""Ray on loopback: a local search listens only on 127.0.0.1, and a search runs across a head and two worker nodes
started as real processes, each with a working directory of its own (no folder of the driver is theirs), tracked by a
real MLflow tracking server on 127.0.0.1; faults: a tracking server outage with the driver killed in it, a killed
worker node."""

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
from autoside.tune.loopback import LoopbackCluster, MlflowServer, is_loopback
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


def test_an_address_nobody_listens_on_is_one_line_at_once():
    from autoside.errors import ConfigError
    from autoside.tune.driver import _check_reachable
    from autoside.tune.loopback import free_port

    port = free_port()
    tic = time.monotonic()
    with pytest.raises(ConfigError, match=f"--address 127.0.0.1:{port}: no Ray cluster answers there"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - tic < 5  # Ray's own connect would retry for minutes
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _check_reachable(f"127.0.0.1:{listener.getsockname()[1]}")  # something answers: left to Ray
    _check_reachable("auto")


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


def _search_cmd(
    tmp_path: Path,
    cluster: LoopbackCluster,
    name: str,
    tracking_uri: str | None,
    samples: int = 4,
    recipe: dict | None = None,
) -> list[str]:
    import yaml

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe or RECIPE))
    cmd = [sys.executable, "-m", "autoside.cli", "search", str(tmp_path / "space.yaml"), str(tmp_path / "recipe.yaml")]
    cmd += ["--num-samples", str(samples), "--max-concurrent", "2", "--name", name, "--address", cluster.address]
    cmd += ["--root", str(tmp_path / "driver"), "--quiet"]
    return cmd + (["--tracking-uri", tracking_uri] if tracking_uri else [])


def _image_folder(root: Path, per_class: int = 24) -> None:
    """Three classes of the built-in digits as PNG files in ``root/<class>/``."""
    from PIL import Image

    from autoside.data import DatasetConfig, load_task

    task = load_task(DatasetConfig(name="digits", train_size=per_class * 10, val_size=1, test_size=1))
    counts: dict[int, int] = {}
    for image, label in zip(task.train.images, task.train.labels.tolist(), strict=True):
        if label < 3 and counts.get(label, 0) < per_class:
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(
                root / str(label) / f"{counts.get(label, 0)}.png"
            )
            counts[label] = counts.get(label, 0) + 1


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
    # An image folder named relative to the driver's folder, which is on no worker node's disk: Ray ships the
    # driver's folder (runtime_env working_dir) and trials read it from their copy.
    _image_folder(workdir / "data" / "digits")
    recipe = {**RECIPE, "dataset": {"name": "imagefolder", "root": "data/digits", "train_size": 48, "val_size": 12}}
    cmd = _search_cmd(tmp_path, cluster, "mn", mlflow_server, recipe=recipe)
    run = subprocess.run(cmd, cwd=workdir, env=cluster.env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    records = _records(workdir, "mn")
    assert [r["status"] for r in records] == ["ok"] * 4, [r.get("error", r.get("reason")) for r in records]
    assert {r["node_id"] for r in records} == set(cluster.node_of.values())  # both worker nodes ran trials

    client = MlflowClient(mlflow_server)
    assert not client.get_experiment_by_name("mn").artifact_location.startswith("file:")
    children = _trial_runs(mlflow_server, "mn")
    # Each trial exactly once (numbers may skip a proposal that repeated a configuration already tried).
    assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == [r["number"] for r in records]
    for r in children:
        assert r.data.tags["status"] == "ok"
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["side_network"]
    # The driver alone wrote the search folder: the records it got through Ray, no weights (those are in MLflow).
    assert {p.name for p in (workdir / "mn" / "trials").glob("*/*")} == {"result.json"}

    # Exported elsewhere (a laptop with the search folder), the weights fetched from the tracking server.
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    export = [sys.executable, "-m", "autoside.cli", "export", "mn", str(laptop / "knee"), "--knee"]
    export += ["--root", str(workdir), "--tracking-uri", mlflow_server, "--json"]
    done = subprocess.run(export, cwd=laptop, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (laptop / "knee" / "side_model.safetensors").is_file() and json.loads(done.stdout)["trial_id"]

    # A SQLite tracking store is refused once the cluster has more than one node: one line, exit 2.
    refused = subprocess.run(
        _search_cmd(tmp_path, cluster, "mn2", None), cwd=workdir, env=cluster.env(), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "mlflow server" in refused.stderr, refused.stderr[-2000:]
    assert len(refused.stderr.strip().splitlines()) == 1
    # A file store must be one folder on every node; a relative one is each node's own (its working directory).
    refused = subprocess.run(
        _search_cmd(tmp_path, cluster, "mn3", "mlruns"), cwd=workdir, env=cluster.env(), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "is not shared with Ray node(s) 127.0.0.1" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (workdir / "mn3").exists()
    probe = (
        "import json, sys, ray; from autoside.tune.loopback import pin_loopback; pin_loopback(); "
        f"ray.init(address={cluster.address!r}, logging_level='ERROR', log_to_driver=False); "
        "from autoside.tune.shared import unshared_nodes; print(json.dumps([unshared_nodes(f) for f in sys.argv[1:]]))"
    )
    shared = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "nfs"), "mlruns"],
        cwd=workdir,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    absolute, relative = json.loads(shared.stdout.strip().splitlines()[-1])
    assert absolute == [] and len(relative) == 2  # both worker nodes have a ./mlruns of their own


def _trial_processes(cluster: LoopbackCluster) -> list[int]:
    """Processes of the cluster's nodes that run a trial (Tune's function trainable actor)."""
    pids = []
    for node in cluster.nodes:
        for pid in node.pids():
            try:
                if b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_tracking_outage_with_the_driver_killed_then_resumed_loses_and_doubles_nothing(
    tmp_path: Path, cluster: LoopbackCluster
) -> None:
    """Stop the MLflow server mid-search: trials go on and their records reach the driver with the MLflow writes
    they could not send (weights inlined), kept in the search folder. SIGKILL the driver while the server is still
    down, start the server again, ``--resume``: every trial is in MLflow exactly once with its metrics (none twice)
    and its weights, nothing is left unsent, and no trial process of the killed driver lives on."""
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "server")
    server.start()
    workdir = tmp_path / "driver"
    workdir.mkdir()
    trials = workdir / "mo" / "trials"
    cmd = _search_cmd(tmp_path, cluster, "mo", server.uri, samples=6)
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(cmd, cwd=workdir, env=cluster.env(), stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(r.data.tags.get("status") == "running" for r in _trial_runs(server.uri, "mo")):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.5)
        server.stop()

        def held() -> set[str]:
            return {p.parent.name for p in trials.glob("*/result.json") if "mlflow_pending" in p.read_text()}

        while len(held()) < 2:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished while the server was down"
            time.sleep(0.5)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        kept = held()
        # Weights that could not reach MLflow came through Ray and wait in the driver's folder.
        assert all((trials / t / "side_network" / "side_model.safetensors").is_file() for t in kept)
        deadline = time.monotonic() + 60  # Ray ends the trials of a driver that died
        while _trial_processes(cluster):
            assert time.monotonic() < deadline, f"trial processes outlive their driver: {_trial_processes(cluster)}"
            time.sleep(1)
    finally:
        if driver.poll() is None:
            driver.kill()
    try:
        server.start()
        resume = [sys.executable, "-m", "autoside.cli", "search", "--resume", "mo", "--root", str(workdir)]
        resume += ["--address", cluster.address, "--quiet"]
        done = subprocess.run(resume, cwd=workdir, env=cluster.env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        records = _records(workdir, "mo")
        assert [r["status"] for r in records] == ["ok"] * 6
        assert (
            not [r for r in records if "mlflow_pending" in r] and not (workdir / "mo" / "mlflow_pending.json").exists()
        )
        children = _trial_runs(server.uri, "mo")
        assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == [r["number"] for r in records]
        assert {r.info.run_id for r in children} == {r["mlflow_run_id"] for r in records}
        client = MlflowClient(server.uri)
        for r in children:
            assert r.data.tags["status"] == "ok" and r.info.status == "FINISHED"
            history = client.get_metric_history(r.info.run_id, "val_accuracy")
            assert len(history) == 2 and {m.step for m in history} == {1}  # the epoch and the final figure, once each
            assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["side_network"]
        assert not _trial_processes(cluster)
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
