"""Proof that a folder is the same folder on every node of a Ray cluster (a network file system), before a search
relies on it: a Ray task pinned to each other node writes a token there, and the driver reads it back.

Trials need no shared disk (records return through Ray, weights go to the MLflow artifact store); the one thing that
still can put them on a shared folder is a file-based MLflow store (``--tracking-uri file:///mnt/nfs/mlruns``). A
relative folder is resolved on each node in that node's own working directory, exactly as the trials will resolve it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

TIMEOUT_S = 120.0


def _write_token(folder: str, name: str, token: str) -> str:
    import ray

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_text(token)
    return ray.get_runtime_context().get_node_id()


def unshared_nodes(folder: str) -> list[str]:
    """Addresses of the live Ray nodes other than the driver's on which ``folder`` is not the driver's ``folder``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    write = ray.remote(num_cpus=0, max_retries=0)(_write_token)
    checks = []
    for node in others:
        name, token = f".autoside-shared-{secrets.token_hex(6)}", secrets.token_hex(16)
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = write.options(scheduling_strategy=strategy).remote(folder, name, token)
        checks.append((node, name, token, ref))
    missing = []
    for node, name, token, ref in checks:
        try:
            ray.get(ref, timeout=TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a node that cannot write there has not shown it shares the folder
            missing.append(node["NodeManagerAddress"])
            continue
        file = Path(folder) / name
        if not (file.is_file() and file.read_text() == token):
            missing.append(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})")
        file.unlink(missing_ok=True)
    return missing
