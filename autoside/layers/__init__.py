"""Shared building blocks of the side-network families (one implementation each, named by YAML-friendly strings)."""

from autoside.layers.create_act import get_act_layer
from autoside.layers.fusion import DepthwiseFusion
from autoside.layers.gates import Swish, swish
from autoside.layers.lowrank import LowRankLinear, LowRankMLP
from autoside.layers.mixers import ChannelMixer, LowRankMixer, TokenMixer
from autoside.layers.recompute import recompute
from autoside.layers.stochastic_depth import SideDropPath, set_side_drop_path
from autoside.layers.temporal import (
    TEMPORAL_MODULES,
    TemporalAttention,
    TemporalConv,
    TemporalKnobs,
    TemporalShift,
    create_temporal,
    get_temporal_layer,
    select_frames,
    shift_frames,
)

__all__ = [
    "TEMPORAL_MODULES",
    "ChannelMixer",
    "DepthwiseFusion",
    "LowRankLinear",
    "LowRankMLP",
    "LowRankMixer",
    "SideDropPath",
    "Swish",
    "TemporalAttention",
    "TemporalConv",
    "TemporalKnobs",
    "TemporalShift",
    "TokenMixer",
    "create_temporal",
    "get_act_layer",
    "get_temporal_layer",
    "recompute",
    "select_frames",
    "set_side_drop_path",
    "shift_frames",
    "swish",
]
