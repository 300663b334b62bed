"""Export a trial of a search: pick it (by id, by memory budget, or the knee of the front), rebuild it, write it.

The trial's side network is rebuilt, not copied: its parameters are replayed through the search space
(:meth:`~autoside.tune.space.SearchSpace.config_from_params`, the path every trial took from parameters to
architecture), the result must equal the config the trial recorded, the backbone is rebuilt from the search's recipe
exactly as the trial built it, and the weights the trial saved are loaded strictly on top. Only then is the export
written with :func:`autoside.export.save.save_pretrained`.

Selection, documented for ``autoside export``:

* ``--trial ID``: that trial (``7`` and ``0007`` are the same); it must have finished (status ``ok``).
* ``--budget 4GiB``: the finished trial with the highest validation accuracy whose measured peak training memory fits
  the budget; ties go to less memory, then the lower trial id (:func:`autoside.tune.pareto.select_by_budget`).
* ``--knee``: the knee of the accuracy / memory front (:func:`autoside.tune.pareto.knee_point`): with both objectives
  min-max normalised over the front, the member farthest above the chord from the cheapest to the most accurate
  member; ties go to the lower trial id, and a front of one or two members gives its most accurate member. It depends
  only on the recorded metrics, so it is the same trial every time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from autoside.errors import AutosideError, ConfigError, WeightsError
from autoside.export.format import ExportError, backbone_state_sha256
from autoside.export.save import save_pretrained
from autoside.sidenets import SideNet


def pick_trial(
    search: Any, *, trial: str | int | None = None, budget: str | int | None = None, knee: bool = False
) -> tuple[Any, str]:
    """The trial record chosen by exactly one of ``trial``, ``budget``, ``knee``, and how it was chosen."""
    from autoside.units import format_bytes, parse_bytes

    if sum(x is not None and x is not False for x in (trial, budget, knee)) != 1:
        raise ConfigError("export: choose the trial with exactly one of --trial ID, --budget SIZE, --knee")
    if trial is not None:
        key: str | int = int(trial) if str(trial).isdigit() else str(trial)
        try:
            record = search.trial(key)
        except AutosideError:
            ids = [r.trial_id for r in search.trials if r.status == "ok"]
            shown = ", ".join(ids[:12]) + (", ..." if len(ids) > 12 else "")
            raise ExportError(
                f"search {search.name!r} has no trial {trial!r} (finished trials: {shown or 'none'})"
            ) from None
        if record.status != "ok":
            reason = f": {record.reason}" if getattr(record, "reason", None) else ""
            raise ExportError(
                f"trial {record.trial_id} of search {search.name!r} is {record.status}{reason}; only "
                f"finished trials (status ok) have weights to export"
            )
        return record, f"trial {record.trial_id}"
    if budget is not None:
        limit = parse_bytes(budget, field="--budget")
        finished = [r for r in search.trials if r.status == "ok" and r.metrics]
        if not any(r.metrics["peak_memory_bytes"] <= limit for r in finished):
            smallest = min((r.metrics["peak_memory_bytes"] for r in finished), default=None)
            hint = (
                f"; the smallest finished trial needs {format_bytes(smallest)}"
                if smallest
                else "; the search has no finished trials"
            )
            raise ExportError(f"no trial of search {search.name!r} fits in {format_bytes(limit)}{hint}")
        return search.best(limit), f"most accurate under {format_bytes(limit)}"
    record = search.knee()
    if record is None:
        raise ExportError(f"search {search.name!r} has no finished trials, so no Pareto front and no knee")
    return record, "knee of the accuracy/memory front"


def replay_config(search: Any, record: Any) -> Any:
    """The trial's side config rebuilt from its parameters; refused unless it equals the recorded config."""
    config = search.space.config_from_params(record.params)
    rebuilt, saved = config.to_dict(), dict(record.config)
    if rebuilt != saved:
        keys = sorted(k for k in set(rebuilt) | set(saved) if rebuilt.get(k) != saved.get(k))
        diffs = ", ".join(f"{k}: recorded {saved.get(k)!r}, replayed {rebuilt.get(k)!r}" for k in keys[:4])
        raise ExportError(
            f"trial {record.trial_id}: replaying its parameters through the search space does not give the config "
            f"it trained ({diffs}); the space or a family changed since the search ran"
        )
    return config


def _trial_weights_dir(search: Any, record: Any, scratch: Path, tracking_uri: str | None) -> Path:
    """The trial's saved side network: in the search folder (searches before weights went to MLflow only, or sent
    there while the tracking server was down), else the MLflow artifact ``runs:/<run id>/side_network``."""
    if record.artifact_dir is not None and Path(record.artifact_dir).is_dir():
        return Path(record.artifact_dir)
    run_id = getattr(record, "mlflow_run_id", None)
    uri = tracking_uri or search.tracking_uri
    if run_id:
        from autoside.export.load import fetch_run_artifacts

        try:
            return fetch_run_artifacts(f"runs:/{run_id}/side_network", uri, scratch)
        except Exception as exc:  # noqa: BLE001 - any MLflow failure means the weights are not there
            detail = f" (MLflow run {run_id} at {uri}: {str(exc).splitlines()[0][:160]})"
    else:
        detail = " (no MLflow run recorded)"
    raise ExportError(
        f"trial {record.trial_id} of search {search.name!r} has no saved side network weights: not in "
        f"{search.dir / 'trials' / record.trial_id / 'side_network'} nor in MLflow{detail}"
    )


def rebuild_trial(search: Any, record: Any, *, tracking_uri: str | None = None) -> tuple[SideNet, dict[str, Any]]:
    """The trial's trained side network on its backbone (eval mode), and its saved ``side_config.json``."""
    from autoside.export.format import read_side_config
    from autoside.export.load import config_from_info, load_state_strict, read_weights
    from autoside.train import build_model

    config = replay_config(search, record)
    with tempfile.TemporaryDirectory() as scratch:
        folder = _trial_weights_dir(search, record, Path(scratch), tracking_uri)
        info = read_side_config(folder)
        # The saved config may hold what the family resolved when it was built (CST's pruned widths): it is the one
        # to rebuild, once it is known to be the trial's.
        saved = config_from_info(info)
        if saved.unresolved() != config:
            raise ExportError(f"{folder}: the saved weights belong to another config than trial {record.trial_id}'s")
        config = saved
        state = read_weights(folder, info)
    # The trial built its model from the recipe with its seed; so does this (the caller's random stream is kept).
    with torch.random.fork_rng(devices=[]):
        model = build_model(search.recipe, int(info["num_classes"]), config)
    expected = info.get("backbone_state_sha256")
    if expected and model.backbone.frozen and backbone_state_sha256(model.backbone) != expected:
        raise WeightsError(
            f"trial {record.trial_id}: the backbone rebuilt from the search's recipe ({model.backbone.spec.weights}) "
            f"has other weights than the one the trial trained on; restore the backbone weights the search used"
        )
    load_state_strict(model, state, source=f"trial {record.trial_id} ({folder})")
    return model.eval(), info


def export_trial(
    name: str,
    out_dir: str | Path,
    *,
    trial: str | int | None = None,
    budget: str | int | None = None,
    knee: bool = False,
    root: str | Path | None = None,
    overwrite: bool = False,
    register: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> tuple[Path, Any]:
    """Export one trial of search ``name`` to ``out_dir``; returns the folder and the trial record.

    Args:
        name: the search's name (``<root>/<name>``).
        out_dir: the export folder to create (refused if it exists, unless ``overwrite``).
        trial, budget, knee: how to choose the trial (exactly one; see the module docstring).
        root: where searches live (default ``autoside_runs``).
        overwrite: replace an existing ``out_dir``.
        register: also log the export as an MLflow pyfunc model and register it under this name.
        tracking_uri: where the trial's weights are fetched from when they are not in the search folder (default:
            the search's tracking URI; from a laptop, the server as it reaches it).
        registry_uri: the MLflow registry for ``register`` (default: ``tracking_uri``, else the search's).
    """
    from autoside.tune.results import open_search

    search = open_search(name, root=root)
    record, chosen_by = pick_trial(search, trial=trial, budget=budget, knee=knee)
    model, info = rebuild_trial(search, record, tracking_uri=tracking_uri)
    recipe = search.recipe
    extra = {
        **(info.get("extra") or {}),
        "search": search.name,
        "trial_id": record.trial_id,
        "params": record.params,
        "selected_by": chosen_by,
        "recipe": recipe.to_dict(),
        "classes": info.get("classes"),
    }
    if extra["classes"] is None:
        del extra["classes"]
    out = save_pretrained(
        model, out_dir, metrics=info.get("metrics") or record.metrics, extra=extra, overwrite=overwrite
    )
    if register:
        from autoside.export.mlflow_model import register as register_model

        register_model(
            out,
            register,
            tracking_uri=registry_uri or tracking_uri or search.tracking_uri,
            experiment=search.name,
            backbone_checkpoint=recipe.backbone.checkpoint,
            backbone=model.backbone,
            tags={"autoside.search": search.name, "autoside.trial_id": record.trial_id},
        )
    return out, record
