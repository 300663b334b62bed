"""What each trial asks Ray for, and the memory cap it runs under (GPU packing that holds).

* **GPUs the cluster can have**, not only those up now: ``--gpus-per-node``, else the node types of the autoscaler
  config (``--cluster-config``, or the ``~/ray_bootstrap_config.yaml`` the cluster launcher leaves on the head), else
  the nodes alive now. An autoscaling cluster whose GPU workers start at ``min_workers: 0`` therefore still gets
  trials that ask for GPUs, and asking is what makes the autoscaler start one.
* **A CUDA trial always asks for its GPU fraction.** With ``--gpus-per-trial auto`` it is the fraction its predicted
  peak needs: ``predicted * MARGIN + CONTEXT_BYTES`` (allocator rounding, kernel workspaces and the CUDA context are
  not in a dry-step prediction), rounded up to a twentieth of a GPU. A trial that asks for no GPU runs on the CPU:
  ``device: auto`` (or ``cuda``) with no GPU request on a cluster that has GPUs is refused before anything starts.
* **Per-trial cap** ``min(budget, share)``, where the share is the fraction's bytes less the CUDA context. Crossing
  the budget is infeasible (a fact about the configuration); running out of the share while under the budget (or
  out of a device a neighbour filled) is a wrong guess of the packer, so the trial is requeued once with the share
  the budget needs (a whole GPU without a budget), and never recorded infeasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoside.errors import ConfigError

MARGIN = 1.25
CONTEXT_BYTES = 512 * 1024**2
STEP = 20  # fractions are multiples of 1/STEP of a GPU
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class GpuInventory:
    """GPUs per node (the largest node type) and where that figure came from."""

    gpus_per_node: float
    source: str


def node_type_gpus(config: dict[str, Any]) -> float:
    """The most GPUs any node type of an autoscaler config declares (0 when none declares GPUs)."""
    types = config.get("available_node_types") or {}
    return max((float((t.get("resources") or {}).get("GPU", 0)) for t in types.values()), default=0.0)


def autoscaler_config(address: str | None, given: str | None) -> str | None:
    """The autoscaler config to read node types from: the one given, else on a running cluster (``--address``)
    the launcher's bootstrap config when this is its head node."""
    if given or address in (None, "", "local"):
        return given
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    return str(path) if path.is_file() else None


def cluster_gpus(*, gpus_per_node: float | None = None, cluster_config: str | None = None) -> GpuInventory:
    """GPUs per node the cluster can have (see the module docstring for the order of the sources)."""
    if gpus_per_node is not None:
        return GpuInventory(float(gpus_per_node), "--gpus-per-node")
    if cluster_config:
        from autoside.config import load_yaml

        gpus = node_type_gpus(load_yaml(cluster_config, what="--cluster-config"))
        return GpuInventory(gpus, f"node types in {cluster_config}")
    import ray

    alive = [n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return GpuInventory(float(max(alive, default=0.0)), "nodes alive now")


def gpu_fraction(need_bytes: int, gpu_memory_bytes: int) -> float:
    """The fraction of one GPU that ``need_bytes`` of predicted peak asks for, margin included."""
    need = math.ceil(need_bytes * MARGIN) + CONTEXT_BYTES
    steps = -(-need * STEP // gpu_memory_bytes)  # integer ceiling: exactly a quarter stays a quarter
    return min(1.0, max(1, steps) / STEP)


def share_bytes(fraction: float, gpu_memory_bytes: int) -> int:
    """The bytes a fraction entitles a trial to, less the CUDA context it also has to hold."""
    return max(0, int(fraction * gpu_memory_bytes) - CONTEXT_BYTES)


def per_trial_cap(budget_bytes: int | None, share: int | None) -> int | None:
    """The memory cap a trial runs under: the smaller of the search's budget and its share (None: neither)."""
    caps = [c for c in (budget_bytes, share) if c is not None]
    return min(caps) if caps else None


def overrun_status(used_bytes: int, budget_bytes: int | None, *, attempt: int) -> str:
    """What running out of memory means for a trial: ``infeasible`` when what it used crossed the budget (a fact
    about the configuration), else ``requeue`` on its first attempt (it ran out of its share, or a neighbour filled
    the device: a wrong guess of the packer, never recorded infeasible); a second attempt that runs out again under
    the budget is ``infeasible`` with its reason."""
    if budget_bytes is not None and used_bytes > budget_bytes:
        return "infeasible"
    return "requeue" if attempt == 1 else "infeasible"


def cuda_oom_bytes(message: str, peak_bytes: int) -> int:
    """What a CUDA out-of-memory trial needed at least: its allocator peak plus the allocation that failed."""
    import re

    from autoside.units import parse_bytes

    found = re.search(r"Tried to allocate ([\d.]+) ?([KMGT]i?B)", message)
    return peak_bytes + (parse_bytes(f"{found.group(1)}{found.group(2)}") if found else 0)


def check_device(device: str, gpus: float, inventory: GpuInventory) -> str:
    """The device trials run on, or a ConfigError when the recipe's device and the GPU request disagree."""
    if gpus > 0:
        if inventory.gpus_per_node <= 0:
            raise ConfigError(
                f"--gpus-per-trial: trials ask for {gpus:g} GPU but the cluster has none ({inventory.source}); "
                "give --gpus-per-node or --cluster-config for GPU workers that are not up yet"
            )
        if device == "cpu":
            raise ConfigError("device: 'cpu' but trials ask Ray for a GPU; set --gpus-per-trial 0")
        return "cuda" if device == "auto" else device
    if device.startswith("cuda") or (device == "auto" and inventory.gpus_per_node > 0):
        raise ConfigError(
            f"device: {device!r} but trials ask Ray for no GPU (--gpus-per-trial 0) while the cluster has GPUs "
            f"({inventory.source}); a trial would use a GPU Ray does not count: set device: cpu or ask for GPUs"
        )
    return "cpu"


class CachedPredictor:
    """Dry-step prediction on the driver for packing, cached per configuration; the backbone is built once and
    copied per prediction (``full`` unfreezes the backbone it is given). It runs on the driver's CPU in fp32,
    which over-states a bf16 trial's activations (a trial that will read the feature cache is predicted on features of
    a few training images, as it will train); the trial predicts again on its own device, refuses itself over
    the budget and records both figures (``predicted_peak_bytes``, ``prediction_error``)."""

    def __init__(self, recipe: Any, space: Any) -> None:
        self.recipe, self.space = recipe, space
        self.task = self.backbone = None
        self.cache: dict[str, int] = {}

    def __call__(self, params: dict[str, Any]) -> int:
        import copy
        import json

        import torch

        from autoside.cache.features import bypass_reason, probe_features
        from autoside.data import load_task
        from autoside.memory.predict import predict_peak_memory
        from autoside.sidenets import create_sidenet
        from autoside.train import apply_grad_checkpointing, build_backbone

        key = json.dumps(params, sort_keys=True)
        if key not in self.cache:
            self.task = self.task or load_task(self.recipe.dataset, image_size=self.recipe.image_size)
            self.backbone = self.backbone or build_backbone(self.recipe)
            torch.manual_seed(self.recipe.seed)
            config = self.space.config_from_params(params)
            model = create_sidenet(config, copy.deepcopy(self.backbone), self.task.num_classes)
            apply_grad_checkpointing(model, self.recipe)
            task, preprocess = self.task, None
            if bypass_reason(model, self.recipe) is None:  # the trial will train on stored features: predict that
                model, task, preprocess = probe_features(model, self.task, self.recipe)
            self.cache[key] = predict_peak_memory(
                model, task, self.recipe, device="cpu", preprocess=preprocess
            ).predicted_bytes
        return self.cache[key]


class Packer:
    """``config -> {gpu_fraction, share_bytes, predicted_bytes}`` for each suggestion (the searcher's
    ``resources``); a requeued configuration (``attempt`` 2) gets the share the budget needs, or a whole GPU."""

    def __init__(self, predict: Any, *, gpu_memory_bytes: int, budget_bytes: int | None) -> None:
        self.predict = predict
        self.gpu_memory_bytes = gpu_memory_bytes
        self.budget_bytes = budget_bytes

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        if int(config.get("attempt", 1)) > 1:
            need = self.budget_bytes
            fraction = gpu_fraction(need, self.gpu_memory_bytes) if need is not None else 1.0
            return {"gpu_fraction": fraction, "share_bytes": share_bytes(fraction, self.gpu_memory_bytes)}
        predicted = config.get("predicted_bytes") or self.predict(config["params"])
        fraction = gpu_fraction(predicted, self.gpu_memory_bytes)
        return {
            "predicted_bytes": int(predicted),
            "gpu_fraction": fraction,
            "share_bytes": share_bytes(fraction, self.gpu_memory_bytes),
        }


def bundle(cpus: float, config: dict[str, Any], fixed_gpus: float) -> dict[str, float]:
    """The Ray resource bundle of one trial: its CPUs and its GPU fraction (packed or fixed)."""
    gpus = float(config.get("gpu_fraction") or fixed_gpus)
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
