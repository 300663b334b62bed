"""Fill the feature cache of every node that will run trials before the first trial starts.

Without this, the first cacheable trial on a node builds the features under the cache's lock, so its wall time
carries the whole build and every trial that arrives meanwhile waits on the lock. A Ray task pinned to each node
(one on a local search) loads the backbone once, stores every feature a configuration of the space may read and the
backbone's weights record, and returns; trials then only read. The lock stays the fallback: a node that joins later,
or a second search building the same cache at the same moment, builds under it as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("autoside.tune")


def may_read_cache(space: Any, recipe: Any) -> bool:
    """Whether some configuration of ``space`` may train on the feature cache under ``recipe``."""
    from autoside.sidenets import SideNet, get_family

    if not recipe.feature_cache or recipe.augment:
        return False
    return any(get_family(f.family).feature_taps is not SideNet.feature_taps for f in space.families)


def space_taps(space: Any, recipe: Any, num_classes: int) -> tuple[str, ...]:
    """Every feature name a configuration of ``space`` may read on the recipe's backbone: each family's
    configurations at the ends of its ranges, built on the meta device, and what the same backbone pass stores with
    their taps."""
    import torch

    from autoside.cache.backbone import spec_backbone
    from autoside.sidenets import SideNet, create_sidenet, get_family

    taps: list[str] = []
    for fam in space.families:
        cls = get_family(fam.family)
        if cls.feature_taps is SideNet.feature_taps:
            continue
        for corner in range(2):
            values = {p.name: p.corners()[-corner] for p in fam.params}
            backbone = spec_backbone(recipe)  # a fresh one each time: a family may change the blocks it is given
            try:
                with torch.device("meta"):
                    net = create_sidenet(cls.config_class.from_dict(fam.kwargs(values)), backbone, num_classes)
            except Exception:  # noqa: BLE001 - a corner this backbone refuses is refused again by its trial
                continue
            if net.cacheable:
                taps += net.feature_taps() or ()
    return spec_backbone(recipe).tap_names(tuple(dict.fromkeys(taps))) if taps else ()


def warm_node(recipe_dict: dict[str, Any], space_dict: dict[str, Any], threads: int) -> dict[str, Any]:
    """The Ray task: on this node, store every feature the space may read and the backbone's weights record."""
    import torch

    from autoside.cache.entries import ensure_features
    from autoside.data import load_task
    from autoside.recipe import recipe_from_dict
    from autoside.train import build_backbone, resolve_device
    from autoside.tune.space import space_from_dict

    tic = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    recipe = recipe_from_dict(recipe_dict)
    task = load_task(recipe.dataset, image_size=recipe.image_size)
    taps = space_taps(space_from_dict(space_dict), recipe, task.num_classes)
    if not taps:
        return {"taps": 0, "built": 0, "seconds": 0.0}
    _, info = ensure_features(build_backbone(recipe), task, recipe, taps, device=resolve_device(recipe.device))
    seconds = round(time.perf_counter() - tic, 2)
    return {"taps": len(taps), "built": info.built, "seconds": seconds, "threads": torch.get_num_threads()}


def warm_cache(
    recipe_dict: dict[str, Any], space_dict: dict[str, Any], *, threads: int, gpus: float, max_concurrent: int
) -> list[dict]:
    """Run :func:`warm_node` on every alive node, all at once; returns what each did. A task that fails is logged and
    left to the trials' own builds.

    The trials wait for it, so a node's task runs the backbone with as many threads as its trials would share (up to
    ``max_concurrent`` trials of ``threads`` each, at most the node's CPUs) instead of leaving all but one trial's
    CPUs idle. It reserves only one trial's CPUs, so on a cluster another job keeps busy it still starts at once.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [
        n
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("CPU", 0) >= threads and n["Resources"].get("GPU", 0) >= gpus
    ]
    task = ray.remote(warm_node)
    refs = {}
    for n in nodes:
        cpus = max(threads, min(int(n["Resources"]["CPU"]), threads * max(1, max_concurrent)))
        refs[n["NodeID"]] = task.options(
            num_cpus=threads,
            num_gpus=gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        ).remote(recipe_dict, space_dict, cpus)
    done = []
    for node, ref in refs.items():
        try:
            done.append({"node": node, **ray.get(ref)})
        except Exception as exc:  # noqa: BLE001 - the trials build under the lock instead
            log.warning("feature cache not built ahead on node %s: %s", node[:8], str(exc).splitlines()[0][:200])
    return done
