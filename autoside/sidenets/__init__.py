"""Side-network families and presets, registered by name like timm models.

``register_family`` marks a :class:`SideNet` subclass as a family (its config class says which knobs exist);
``register_sidenet`` marks a preset function returning keyword defaults for a family. ``create_sidenet`` takes either
name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from autoside.backbones import Backbone
from autoside.errors import ConfigError
from autoside.sidenets.base import SideConfig, SideNet

_FAMILIES: dict[str, type[SideNet]] = {}
_PRESETS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {}


def register_family(cls: type[SideNet]) -> type[SideNet]:
    """Class decorator: the family's name is its config class's ``family``."""
    name = cls.config_class.family
    if not name or name in _FAMILIES:
        raise ValueError(f"family name {name!r} is empty or registered twice")
    _FAMILIES[name] = cls
    return cls


def register_sidenet(family: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
    """Decorator for a preset: a function named like the preset that returns the family's config kwargs."""

    def wrap(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        _PRESETS[fn.__name__] = (family, fn)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the family modules registers them; kept out of import time of autoside itself.
    from autoside.sidenets import baselines  # noqa: F401

    for module in ("losa", "losa_video", "dtl", "side4video", "cst"):
        try:
            __import__(f"autoside.sidenets.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"autoside.sidenets.{module}":
                raise


def list_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


def list_sidenets(filter: str = "*") -> list[str]:
    """Preset and family names matching a shell-style pattern."""
    _ensure_loaded()
    return sorted(n for n in {*_FAMILIES, *_PRESETS} if fnmatch.fnmatch(n, filter))


def describe_sidenet(name: str) -> tuple[str, str]:
    """A preset's or family's family and one-line description (the first paragraph of its docstring)."""
    _ensure_loaded()
    family, doc = (
        (_PRESETS[name][0], _PRESETS[name][1].__doc__) if name in _PRESETS else (name, get_family(name).__doc__)
    )
    return family, " ".join((doc or "").strip().split("\n\n", 1)[0].split())


def get_family(name: str) -> type[SideNet]:
    _ensure_loaded()
    if name not in _FAMILIES:
        raise ConfigError(f"sidenet.family: unknown family {name!r} (allowed: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def resolve(name: str, **kwargs: Any) -> SideConfig:
    """The config a preset or family name stands for, with ``kwargs`` (``None`` values dropped) applied."""
    _ensure_loaded()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in _PRESETS:
        family, fn = _PRESETS[name]
        kwargs = {**fn(), **kwargs}
    elif name in _FAMILIES:
        family = name
    else:
        raise ConfigError(f"sidenet: unknown side network {name!r} (allowed: {', '.join(list_sidenets())})")
    return get_family(family).config_class.from_dict(kwargs)


def create_sidenet(name_or_config: str | SideConfig, backbone: Backbone, num_classes: int, **kwargs: Any) -> SideNet:
    """Build a side network beside ``backbone``; the backbone spec is checked against the config first."""
    config = resolve(name_or_config, **kwargs) if isinstance(name_or_config, str) else name_or_config
    return get_family(config.family)(config, backbone, num_classes)


def config_from_dict(data: dict[str, Any]) -> SideConfig:
    """Inverse of ``SideConfig.to_dict`` (the ``family`` key picks the class)."""
    if "family" not in data:
        raise ConfigError("sidenet.family: required key is missing")
    return get_family(data["family"]).config_class.from_dict(data)


__all__ = [
    "SideConfig",
    "SideNet",
    "config_from_dict",
    "create_sidenet",
    "get_family",
    "list_families",
    "list_sidenets",
    "register_family",
    "register_sidenet",
    "resolve",
]
