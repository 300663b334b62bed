"""The search (``autoside.search``): Ray Tune runs the trials, Optuna proposes side networks, MLflow records everything.

``autoside.search(space, recipe, **options)`` (and ``autoside search SPACE RECIPE``) validates everything up front,
connects to Ray (a local cluster bound to 127.0.0.1 by default), opens the MLflow parent run and the Optuna study
(SQLite, next to the MLflow store) and runs a :class:`ray.tune.Tuner` whose search algorithm is
:class:`~autoside.tune.sampler.AutosideOptunaSearch`. Each trial runs :func:`autoside.tune.trial.run_search_trial`.
At the end the Pareto set is computed from the trials' ``result.json`` files, tagged in MLflow and logged
(``pareto.csv``, ``pareto.png``, hypervolume) to the parent run. ``resume=NAME`` continues a search whose driver
died: finished trials are kept, trials that were running are run again under the same id, nothing is duplicated.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from autoside.config import from_dict
from autoside.errors import ConfigError
from autoside.tune.results import DEFAULT_ROOT, SearchResult, TrialRecord, open_search, search_dir
from autoside.units import format_bytes, parse_bytes

__all__ = ["SearchOptions", "SearchResult", "TrialRecord", "open_search", "search"]


@dataclass(frozen=True)
class SearchOptions:
    """Options of a search (the CLI's flags); every one is checked before anything starts."""

    num_samples: int = 8
    max_concurrent: int = 2
    memory_budget: str | int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: str | float = "auto"
    gpus_per_node: float | None = None
    gpu_memory: str | int | None = None
    cluster_config: str | None = None
    sampler: Literal["auto", "family-gp", "tpe", "nsga2", "gp", "random"] = "auto"
    scheduler: Literal["none", "asha", "moasha"] = "none"
    address: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    seed: int | None = 0
    objectives: tuple[str, ...] = ("accuracy", "memory")
    root: str = DEFAULT_ROOT
    resume: str | None = None
    progress: bool = True
    cache_dir: str | None = None
    no_cache: bool = False
    working_dir: str | None = None  # shipped to every trial; default: the current folder on a running cluster

    def __post_init__(self) -> None:
        from autoside.tune.pareto import OBJECTIVES

        for key in ("num_samples", "max_concurrent"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')}: must be at least 1, got {getattr(self, key)}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial: must be positive, got {self.cpus_per_trial}")
        if isinstance(self.gpus_per_trial, str) and self.gpus_per_trial != "auto":
            raise ConfigError(f"--gpus-per-trial: expected 'auto' or a number of GPUs, got {self.gpus_per_trial!r}")
        if not isinstance(self.gpus_per_trial, str) and self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial: must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise ConfigError(f"--gpus-per-node: must be >= 0, got {self.gpus_per_node}")
        parse_bytes(self.gpu_memory, field="--gpu-memory")
        if list(self.objectives[:2]) != ["accuracy", "memory"] or any(o not in OBJECTIVES for o in self.objectives):
            raise ConfigError(f"--objectives: expected accuracy,memory[,params], got {','.join(self.objectives)}")
        parse_bytes(self.memory_budget, field="--memory-budget")
        if self.name is not None:
            search_dir(self.name, self.root)


def _options(options: dict[str, Any]) -> SearchOptions:
    if isinstance(options.get("gpus_per_trial"), str) and options["gpus_per_trial"] != "auto":
        try:
            options = {**options, "gpus_per_trial": float(options["gpus_per_trial"])}
        except ValueError:
            pass
    return from_dict(SearchOptions, options, field="")


def _load_inputs(space: Any, recipe: Any):  # noqa: ANN202
    from autoside.recipe import Recipe, load_recipe, recipe_from_dict
    from autoside.tune.space import SearchSpace, load_space, space_from_dict

    if space is None or recipe is None:
        raise ConfigError("a search needs a SPACE and a RECIPE (or --resume NAME)")
    if isinstance(space, (str, Path)):
        space = load_space(space)
    elif isinstance(space, dict):
        space = space_from_dict(space)
    elif not isinstance(space, SearchSpace):
        raise ConfigError(f"space: expected a path, a dict or a SearchSpace, got {type(space).__name__}")
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    elif isinstance(recipe, dict):
        recipe = recipe_from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe: expected a path, a dict or a Recipe, got {type(recipe).__name__}")
    return space, recipe


def search(space: Any = None, recipe: Any = None, **options: Any) -> SearchResult:
    """Run (or with ``resume=NAME`` continue) a search; returns it read back from disk.

    Args:
        space: a search space YAML path, dict or :class:`~autoside.tune.space.SearchSpace`.
        recipe: a trial recipe YAML path, dict or :class:`~autoside.recipe.Recipe`.
        **options: the fields of :class:`SearchOptions` (``num_samples``, ``memory_budget``, ``sampler``, ...).
    """
    opts = _options(options)
    if opts.resume:
        return _resume(opts, options)
    space, recipe = _load_inputs(space, recipe)
    budget = parse_bytes(opts.memory_budget, field="--memory-budget") or recipe.budget_bytes
    name = opts.name or f"{space.name}-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = search_dir(name, opts.root)
    if path.exists():
        raise ConfigError(
            f"search {name!r} already exists in {opts.root}; continue it with --resume {name} or choose another --name"
        )
    recipe = replace(recipe, memory_budget=budget, feature_cache=recipe.feature_cache and not opts.no_cache)
    from autoside.tune.sampler import resolve_sampler

    opts = replace(opts, sampler=resolve_sampler(opts.sampler, opts.num_samples))  # stored: a resume keeps it
    if opts.cache_dir:
        recipe = replace(recipe, cache_dir=opts.cache_dir)
    _preflight(space, recipe, budget)
    tracking_uri = opts.tracking_uri or _default_uri(opts.root)
    meta = {
        "name": name,
        "status": "starting",
        "space": space.to_dict(),
        "recipe": recipe.to_dict(),
        "options": {**asdict(replace(opts, name=name)), "objectives": list(opts.objectives)},
        "budget_bytes": budget,
        "tracking_uri": tracking_uri,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attempts": 0,
    }
    return _drive(path, meta, space, recipe, opts, new=True)


def _resume(opts: SearchOptions, given: dict[str, Any]) -> SearchResult:
    previous = open_search(opts.resume, root=opts.root)
    meta = dict(previous.meta)
    saved = dict(meta["options"])
    # A resume may raise the number of trials; everything else is the search's own.
    if "num_samples" in given:
        saved["num_samples"] = opts.num_samples
    for key in ("progress", "address", "max_concurrent", "working_dir"):
        if key in given:
            saved[key] = given[key]
    saved.update(resume=opts.resume, objectives=tuple(saved["objectives"]))
    opts = from_dict(SearchOptions, saved, field="")
    meta["options"] = {**asdict(opts), "objectives": list(opts.objectives)}
    return _drive(previous.dir, meta, previous.space, previous.recipe, opts, new=False)


def _default_uri(root: str) -> str:
    from autoside.tune.tracking import default_tracking_uri

    return default_tracking_uri(Path(root))


def _preflight(space: Any, recipe: Any, budget: int | None) -> None:
    """Before anything starts: the space must suit the backbone, and the budget must be above what every
    configuration needs (the frozen backbone's weights and one input batch are resident in every trial that does
    not read the feature cache)."""
    from autoside.data import list_datasets
    from autoside.sidenets import get_family
    from autoside.train import build_backbone
    from autoside.tune.warm import may_read_cache

    video = list_datasets()[recipe.dataset.name.split("/")[0]].video
    if video:
        image_only = [f.family for f in space.families if get_family(f.family).modality != "video"]
        if image_only:
            raise ConfigError(
                f"search space {space.name!r}: {', '.join(image_only)} read images, but dataset "
                f"{recipe.dataset.name!r} holds clips; search video families (side4video, losa_video) on it"
            )
    backbone = build_backbone(recipe)
    space.check_backbone(backbone.spec, frames=recipe.dataset.frames if video else None)
    if budget is None:
        return
    if may_read_cache(space, recipe):
        # A trial on stored features holds neither the backbone nor images, but at least one batch of the smallest
        # feature any family reads (the pooled one, stored in 16 bits at the least).
        need = recipe.batch_size * backbone.spec.num_features * 2
        if budget < need:
            raise ConfigError(
                f"--memory-budget {format_bytes(budget)} is below what any configuration of space {space.name!r} "
                f"can fit: even on stored features, one batch of {recipe.batch_size} pooled features of "
                f"{recipe.backbone.name} needs {format_bytes(need)}; raise the budget"
            )
        return
    state = sum(t.numel() * t.element_size() for t in [*backbone.parameters(), *backbone.buffers()])
    frames = recipe.dataset.frames if video else 1
    batch = recipe.batch_size * frames * 3 * backbone.spec.image_size**2 * 4
    need = state + batch
    if budget < need:
        raise ConfigError(
            f"--memory-budget {format_bytes(budget)} is below what any configuration of space {space.name!r} can fit: "
            f"the frozen {recipe.backbone.name} alone ({format_bytes(state)}) and one input batch of "
            f"{recipe.batch_size} ({format_bytes(batch)}) need {format_bytes(need)}; raise the budget or lower "
            f"batch_size / image_size"
        )


def _drive(
    path: Path, meta: dict[str, Any], space: Any, recipe: Any, opts: SearchOptions, *, new: bool
) -> SearchResult:
    """Connect, prepare the stores, run the Tuner, finalise. A failure before any trial starts removes what a new
    search wrote."""
    from autoside.tune import driver
    from autoside.tune.workdir import default_working_dir, runtime_env

    started = time.time()
    folder = opts.working_dir if opts.working_dir is not None else default_working_dir(opts.address)
    owns_ray = driver.connect_ray(opts.address, runtime_env(folder, search_dir=path))
    try:
        try:
            driver.check_tracking_reachable(meta["tracking_uri"])
            state = driver.prepare(path, meta, space, recipe, opts, new=new)
        except BaseException:
            if new:
                driver.discard(path, meta)
            raise
        interrupted = driver.run_tuner(state)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    result = driver.finalize(state, interrupted=interrupted, seconds=time.time() - started)
    if interrupted:
        raise KeyboardInterrupt
    return result


def result_json(result: SearchResult) -> dict[str, Any]:
    """A JSON summary (``autoside search --json`` / ``autoside pareto --json``)."""

    def row(r: TrialRecord) -> dict[str, Any]:
        return {
            "trial_id": r.trial_id,
            "status": r.status,
            "family": r.config.get("family"),
            "params": r.params,
            "val_accuracy": r.accuracy,
            "peak_memory_bytes": r.memory,
            "trainable_params": r.metrics.get("trainable_params"),
        }

    return {
        "name": result.name,
        "dir": str(result.dir),
        "status": result.status,
        "budget_bytes": result.budget_bytes,
        "counts": result.counts(),
        "hypervolume": result.hypervolume,
        "pareto": [row(r) for r in result.pareto],
        "trials": [row(r) for r in result.trials],
    }


def _env() -> None:
    """Quiet Ray and Optuna: autoside prints its own progress and records results itself (no Tune loggers)."""
    import logging
    import warnings

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray runs workers at niceness 15; trials are the work here, and must not lose the CPU to everything else.
    os.environ.setdefault("RAY_worker_niceness", "0")
    for name in (
        "ray.tune.analysis.experiment_analysis",
        "ray._private.authentication.authentication_token_setup",
        "ray.tune.tune",
        "ray.tune.impl.tuner_internal",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


_env()
