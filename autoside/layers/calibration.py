"""Calibration gates: a side feature ``s`` corrects a frozen backbone feature ``b`` of the same shape (N, C, H, W).

Every gate computes ``b + g * (s - b)``, a move from the backbone's feature towards the side's by a factor ``g`` in
(0, 1); the gates differ only in what ``g`` is:

* ``scalar``: one learned logit per stage, ``g = sigmoid(alpha)`` (the learned-mixing gate of LST, Sung et al. 2022);
* ``channel``: one learned logit per channel;
* ``spatial``: a map over positions from a ``k x k`` conv over the channel-mean and channel-max of ``b`` and ``s``
  (a CBAM-style spatial attention);
* ``mtc``: Maximum Transition Calibration, as autoside reads CST (Chen 2024, arXiv 2402.12736): per channel,
  ``g_c = sigmoid(a_c * max(b_c) + d_c * max(s_c) + e_c)``, driven by the largest response (global max pool) of the
  channel in each branch, so a channel moves to the side's feature where the side responds strongly. See
  :mod:`autoside.sidenets.cst` for what the paper states and what is inferred.

Input-dependent weights start at zero and every bias at ``GATE_INIT``, so at initialisation all gates pass
``b + sigmoid(GATE_INIT) * (s - b)``: mostly the backbone's feature, a smooth start whatever the side holds.
"""

from __future__ import annotations

import torch
from torch import nn

GATE_INIT = -2.0  # sigmoid(-2) = 0.12
CALIBRATION_GATES = ("mtc", "scalar", "channel", "spatial")


def calibrate(backbone: torch.Tensor, side: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``b + g * (s - b)``."""
    return backbone + gate * (side - backbone)


class ScalarGate(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((1,), GATE_INIT))

    def forward(self, backbone: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return calibrate(backbone, side, torch.sigmoid(self.logit))


class ChannelGate(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((channels, 1, 1), GATE_INIT))

    def forward(self, backbone: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return calibrate(backbone, side, torch.sigmoid(self.logit))


class SpatialGate(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 1, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.constant_(self.conv.bias, GATE_INIT)

    def forward(self, backbone: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        stats = [backbone.mean(1, keepdim=True), backbone.amax(1, keepdim=True)]
        stats += [side.mean(1, keepdim=True), side.amax(1, keepdim=True)]
        return calibrate(backbone, side, torch.sigmoid(self.conv(torch.cat(stats, dim=1))))


class MaxTransitionGate(nn.Module):
    """MTC: a per-channel gate driven by each branch's global max response (see the module docstring)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.backbone_weight = nn.Parameter(torch.zeros(channels))
        self.side_weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.full((channels,), GATE_INIT))

    def forward(self, backbone: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        logit = self.backbone_weight * backbone.amax(dim=(2, 3)) + self.side_weight * side.amax(dim=(2, 3)) + self.bias
        return calibrate(backbone, side, torch.sigmoid(logit)[:, :, None, None])


_GATES: dict[str, type[nn.Module]] = {
    "mtc": MaxTransitionGate,
    "scalar": ScalarGate,
    "channel": ChannelGate,
    "spatial": SpatialGate,
}


def create_calibration_gate(name: str, channels: int) -> nn.Module:
    """A gate by name (one of :data:`CALIBRATION_GATES`) for features with ``channels`` channels."""
    if name not in _GATES:
        raise ValueError(f"unknown calibration gate {name!r} (allowed: {', '.join(CALIBRATION_GATES)})")
    return _GATES[name](channels)
