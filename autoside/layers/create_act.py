"""Activations by name, so YAML configs can say ``act: gelu`` (after timm's ``get_act_layer``)."""

from __future__ import annotations

from torch import nn

_ACTS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def get_act_layer(name_or_class: str | type[nn.Module]) -> type[nn.Module]:
    """The activation class for a name (``gelu``, ``relu``, ``silu``, ...) or the class itself."""
    if isinstance(name_or_class, type):
        return name_or_class
    try:
        return _ACTS[name_or_class.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name_or_class!r} (allowed: {', '.join(_ACTS)})") from None
