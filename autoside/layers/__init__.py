"""Shared building blocks of the side-network families (one implementation each, named by YAML-friendly strings)."""

from autoside.layers.create_act import get_act_layer
from autoside.layers.fusion import DepthwiseFusion
from autoside.layers.gates import Swish, swish
from autoside.layers.lowrank import LowRankLinear, LowRankMLP
from autoside.layers.mixers import ChannelMixer, LowRankMixer, TokenMixer
from autoside.layers.stochastic_depth import SideDropPath, set_side_drop_path

__all__ = [
    "ChannelMixer",
    "DepthwiseFusion",
    "LowRankLinear",
    "LowRankMLP",
    "LowRankMixer",
    "SideDropPath",
    "Swish",
    "TokenMixer",
    "get_act_layer",
    "set_side_drop_path",
    "swish",
]
