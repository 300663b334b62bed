"""Temporal modules: how a video side network mixes information across frames, named so a search space can pick one.

Every module maps a token map ``(B, C, T, H, W)`` to an update of the same shape; the caller adds it to its input
(a residual branch), so ``none`` (no branch at all) is a valid choice and the search can ask whether time matters.

* ``conv``: a depthwise convolution along time inside a pointwise bottleneck (``C -> ratio*C -> C``), as Side4Video's
  side blocks do it; ``kernel`` frames (3 / 5 / 7) and optionally ``spatial_kernel`` pixels of spatial extent
  (Side4Video: 3x1x1).
* ``attn``: multi-head self-attention over the frames of each patch position, with a fixed sinusoidal frame
  embedding (attention alone cannot tell the order of frames, and a fixed embedding works for any clip length).
* ``shift``: TSM's temporal shift (Lin, Gan and Han, ICCV 2019): a ``fraction`` of the channels is taken from the next
  frame (half of it) and the previous frame (the other half), zeros at the clip's ends, then a pointwise projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from autoside.errors import ConfigError

TEMPORAL_MODULES = ("none", "conv", "attn", "shift")


def shift_frames(x: torch.Tensor, fold: int, *, dim: int = 2) -> torch.Tensor:
    """Channels ``[:fold]`` from frame ``t+1``, ``[fold:2*fold]`` from frame ``t-1`` (zeros at the ends), the rest
    unchanged; channels are dim 1, frames dim ``dim``."""
    out = torch.zeros_like(x)
    later, earlier = x.narrow(1, 0, fold), x.narrow(1, fold, fold)
    t = x.shape[dim]
    out.narrow(1, 0, fold).narrow(dim, 0, t - 1).copy_(later.narrow(dim, 1, t - 1))
    out.narrow(1, fold, fold).narrow(dim, 1, t - 1).copy_(earlier.narrow(dim, 0, t - 1))
    rest = x.shape[1] - 2 * fold
    out.narrow(1, 2 * fold, rest).copy_(x.narrow(1, 2 * fold, rest))
    return out


class TemporalConv(nn.Module):
    """Pointwise -> depthwise (``kernel`` x ``spatial_kernel``^2) -> pointwise, all with biases."""

    def __init__(self, dim: int, *, kernel: int = 3, spatial_kernel: int = 1, ratio: float = 1.0) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0 or spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"kernel sizes must be odd and positive, got {kernel} x {spatial_kernel}")
        hidden = max(1, round(dim * ratio))
        size, pad = (kernel, spatial_kernel, spatial_kernel), (kernel // 2, spatial_kernel // 2, spatial_kernel // 2)
        self.reduce = nn.Conv3d(dim, hidden, 1)
        self.depthwise = nn.Conv3d(hidden, hidden, size, padding=pad, groups=hidden)
        self.expand = nn.Conv3d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.depthwise(self.reduce(x)))


class TemporalAttention(nn.Module):
    """Self-attention among the ``T`` frames of every patch position (``heads`` heads)."""

    def __init__(self, dim: int, *, heads: int = 1) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"heads must divide the width {dim}, got {heads}")
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    @staticmethod
    def frame_embedding(frames: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Sinusoidal embedding ``(T, C)`` of the frame index (transformer-style, fixed)."""
        position = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
        emb = torch.zeros(frames, dim, device=device)
        emb[:, 0::2] = torch.sin(position * freq)
        emb[:, 1::2] = torch.cos(position * freq[: dim // 2])
        return emb.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        seq = seq + self.frame_embedding(t, c, x.device, x.dtype)
        out = self.attn(seq, seq, seq, need_weights=False)[0]
        return out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class TemporalShift(nn.Module):
    """TSM: shift ``fraction`` of the channels by one frame (half forward, half backward), then a pointwise mix."""

    def __init__(self, dim: int, *, fraction: float = 0.25) -> None:
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fold = max(1, int(dim * fraction) // 2)
        self.proj = nn.Conv3d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(shift_frames(x, self.fold))


_MODULES: dict[str, type[nn.Module]] = {"conv": TemporalConv, "attn": TemporalAttention, "shift": TemporalShift}


def get_temporal_layer(name_or_class: str | type[nn.Module]) -> type[nn.Module] | None:
    """The temporal module class for a name (``none`` gives ``None``: no temporal branch), or the class itself."""
    if isinstance(name_or_class, type):
        return name_or_class
    if name_or_class == "none":
        return None
    try:
        return _MODULES[name_or_class]
    except KeyError:
        raise ValueError(
            f"unknown temporal module {name_or_class!r} (allowed: {', '.join(TEMPORAL_MODULES)})"
        ) from None


def create_temporal(name_or_class: str | type[nn.Module], dim: int, **knobs: Any) -> nn.Module | None:
    """A temporal module of width ``dim``; ``knobs`` that the chosen module does not take are ignored, so one config
    can carry the knobs of every module (only the chosen one's are read)."""
    cls = get_temporal_layer(name_or_class)
    if cls is None:
        return None
    accepted = {
        TemporalConv: ("kernel", "spatial_kernel", "ratio"),
        TemporalAttention: ("heads",),
        TemporalShift: ("fraction",),
    }.get(cls)
    kwargs = knobs if accepted is None else {k: v for k, v in knobs.items() if k in accepted}
    return cls(dim, **kwargs)


@dataclass(frozen=True)
class TemporalKnobs:
    """The temporal-module knobs a video family's config carries (mixed into its frozen config dataclass), so every
    video family searches the same dimension with the same names.

    Attributes:
        temporal: the temporal module (``none``: no temporal branch).
        temporal_kernel: frames seen by the ``conv`` module (odd).
        temporal_spatial_kernel: spatial extent of the ``conv`` module's depthwise kernel (Side4Video: 1).
        temporal_ratio: width of the ``conv`` bottleneck as a fraction of the side width.
        shift_fraction: fraction of channels the ``shift`` module moves in time.
    """

    temporal: Literal["none", "conv", "attn", "shift"] = "conv"
    temporal_kernel: int = 3
    temporal_spatial_kernel: int = 1
    temporal_ratio: float = 1.0
    shift_fraction: float = 0.25

    def check_temporal(self) -> None:
        """Validate the knobs; then those of a module not chosen are put at their defaults (see
        ``SideConfig._unused``)."""
        for name in ("temporal_kernel", "temporal_spatial_kernel"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0:
                raise ConfigError(f"sidenet.{name}: must be an odd number >= 1, got {value}")
        if self.temporal_ratio <= 0:
            raise ConfigError(f"sidenet.temporal_ratio: must be positive, got {self.temporal_ratio}")
        if not 0 < self.shift_fraction <= 1:
            raise ConfigError(f"sidenet.shift_fraction: must be in (0, 1], got {self.shift_fraction}")
        if self.temporal != "conv":
            self._unused(temporal_kernel=None, temporal_spatial_kernel=None, temporal_ratio=None)
        if self.temporal != "shift":
            self._unused(shift_fraction=None)

    def build_temporal(self, dim: int, heads: int = 1) -> nn.Module | None:
        """The chosen temporal module of width ``dim`` (``heads`` for ``attn``)."""
        return create_temporal(
            self.temporal,
            dim,
            kernel=self.temporal_kernel,
            spatial_kernel=self.temporal_spatial_kernel,
            ratio=self.temporal_ratio,
            heads=heads,
            fraction=self.shift_fraction,
        )


def select_frames(clip: torch.Tensor, frames: int | None) -> torch.Tensor:
    """``frames`` evenly spaced frames (segment centres) of ``(B, T, C, H, W)`` clips; ``None`` keeps them all and a
    one-frame clip (a still image) is repeated to a static clip."""
    have = clip.shape[1]
    if frames is None or frames == have:
        return clip
    if have == 1:
        return clip.expand(-1, frames, *clip.shape[2:])
    if frames > have:
        raise ConfigError(
            f"sidenet.frames: {frames} is more than the {have} frames of the input clips (dataset.frames)"
        )
    index = ((torch.arange(frames) + 0.5) * have / frames).long()
    return clip[:, index.to(clip.device)]
