"""autoside: find the best side network for a frozen vision backbone under a memory budget.

The public API is small and imports lazily, so ``import autoside`` stays fast; Ray, MLflow and Optuna load only when
a search runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "create_backbone": "autoside.backbones",
    "list_backbones": "autoside.backbones",
    "create_sidenet": "autoside.sidenets",
    "list_sidenets": "autoside.sidenets",
    "register_sidenet": "autoside.sidenets",
    "load_recipe": "autoside.recipe",
    "Recipe": "autoside.recipe",
    "run_trial": "autoside.train",
    "TrialResult": "autoside.train",
    "MemoryMeter": "autoside.memory.meter",
    "search": "autoside.tune.api",
    "open_search": "autoside.tune.results",
    "load": "autoside.export.load",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from autoside.backbones import create_backbone, list_backbones  # noqa: F401
    from autoside.memory.meter import MemoryMeter  # noqa: F401
    from autoside.recipe import Recipe, load_recipe  # noqa: F401
    from autoside.sidenets import create_sidenet, list_sidenets, register_sidenet  # noqa: F401
    from autoside.train import TrialResult, run_trial  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autoside' has no attribute {name!r}")
