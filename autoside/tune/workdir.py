"""The folder a search ships to every trial as its working directory (Ray's ``runtime_env`` ``working_dir``).

A recipe names files relative to where the user runs ``autoside search``: an image folder (``dataset.root:
data/pets``), a backbone checkpoint, an annotation list. On a cluster whose nodes share no disk, trials on worker
nodes would look for them in their own folders; Ray uploads the driver's folder once (through the cluster's object
store, at most about 500 MiB zipped) and every trial process starts inside an unpacked copy, so relative paths
mean the same on every node. Searches on the local cluster the driver starts need none of this (their workers
already run on the driver's disk).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from autoside.errors import ConfigError

# Besides Ray's own (.git, .venv, venv, __pycache__) and what .gitignore names: what a search writes and caches.
EXCLUDES = (
    "autoside_runs/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    ".cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "*.egg-info/",
)


def runtime_env(working_dir: str | None, *, search_dir: str | Path | None = None) -> dict[str, Any]:
    """Ray's ``runtime_env`` for a search: ``working_dir`` (``"none"``: ship nothing) without the search's own
    folder when it lies inside it, and the trial workers' environment (:func:`autoside.memory.heap.worker_env`)."""
    from autoside.memory.heap import worker_env

    env: dict[str, Any] = {"env_vars": worker_env()}
    if working_dir in (None, "", "none"):
        return env
    folder = Path(working_dir).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--working-dir: {working_dir} is not a folder (use 'none' to ship nothing to the workers)")
    excludes = list(EXCLUDES)
    if search_dir is not None:
        own = Path(search_dir).expanduser().resolve()
        if own != folder and own.is_relative_to(folder):
            excludes.append(f"/{own.relative_to(folder).as_posix()}/")
    return {**env, "working_dir": str(folder), "excludes": excludes}


def default_working_dir(address: str | None) -> str | None:
    """The current folder for a cluster that is already running (its nodes may share no disk), else none."""
    return None if address in (None, "", "local") else os.getcwd()


def explain_upload_error(exc: BaseException, working_dir: str) -> ConfigError | None:
    """One line for Ray's refusal of a working directory too large to ship (None: another error)."""
    text = str(exc)
    if "Package size" not in text and "exceeds the maximum size" not in text:
        return None
    first = text.split(". ", 1)[0]
    return ConfigError(
        f"--working-dir: {working_dir} is too large to ship to the workers ({first}); list big files in its "
        ".gitignore or .rayignore, or pass --working-dir none and give the recipe absolute paths every node can read"
    )
