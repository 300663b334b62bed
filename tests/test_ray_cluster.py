"""ray_cluster.yaml passes Ray's own launcher checks, and the commands of docs/cluster.md are ones autoside accepts."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_ray_prepares_and_validates_the_cluster_config(cluster: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo Ray's schema must catch
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_cluster_config_is_current_and_complete(cluster: dict) -> None:
    import ray

    nodes = cluster["available_node_types"]
    for node in nodes.values():
        assert "latest_dlami" not in str(node["node_config"].get("ImageId", ""))
    assert nodes["gpu_worker"]["resources"].get("GPU", 0) >= 1  # declared, so a search sees GPUs before any is up
    assert nodes["gpu_worker"]["min_workers"] == 0
    images = cluster["docker"]
    assert images["head_image"].split(":")[1].startswith(ray.__version__ + "-")
    assert images["worker_image"].split(":")[1].startswith(ray.__version__ + "-") and "gpu" in images["worker_image"]
    assert {".venv", "autoside_runs", ".git"} <= set(cluster["rsync_exclude"])
    assert any("pip install" in c and "~/autoside" in c for c in cluster["setup_commands"])
    head = " ".join(cluster["head_start_ray_commands"])
    assert "mlflow server" in head and "--artifacts-destination" in head and "--dashboard-host=127.0.0.1" in head


def _lines(text: str) -> list[str]:
    return [
        line.split("  #")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
        if line.strip()
    ]


def _autoside_commands(text: str) -> list[list[str]]:
    """Every ``autoside ...`` command line in the document's shell blocks, with ``ray exec '...'`` unwrapped."""
    commands = []
    for line in _lines(text):
        inner = re.search(r"'(.*)'$", line)
        line = inner.group(1) if line.startswith("ray exec") and inner else line
        for part in line.split("&&"):
            words = shlex.split(part.replace('$(hostname -I | cut -d" " -f1)', "10.0.0.2"))
            if words and words[0] == "autoside":
                commands.append(words[1:])
    return commands


def test_every_ray_command_in_the_cluster_guide_parses() -> None:
    """Each ``ray ...`` line is a command and options Ray's own CLI accepts (parsed, not run), on this config."""
    from ray.scripts.scripts import cli

    lines = [
        shlex.split(line) for line in _lines((REPO / "docs" / "cluster.md").read_text()) if line.startswith("ray ")
    ]
    assert {words[1] for words in lines} >= {"up", "exec", "attach", "rsync-down", "down"}
    for words in lines:
        command = cli.get_command(None, words[1])
        assert command is not None, words
        command.make_context(words[1], words[2:])
        assert words[2] == "ray_cluster.yaml"


def test_every_autoside_command_in_the_cluster_guide_parses() -> None:
    from autoside.cli.main import build_parser

    commands = _autoside_commands((REPO / "docs" / "cluster.md").read_text())
    assert {c[0] for c in commands} >= {"search", "pareto", "export", "predict"}
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(words)
        if words[0] == "search":
            assert args.address == "auto" and (args.tracking_uri or "").startswith("http://") or args.resume
