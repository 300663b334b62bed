"""Calibration gates against a plain re-computation of their equations, and pruning replayed from stored widths."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

from autoside.layers.calibration import CALIBRATION_GATES, GATE_INIT, create_calibration_gate
from autoside.layers.pruning import Stages, conv_widths, prune_stages, prune_to_widths


def _randomise(gate: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in gate.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def _expected(name: str, gate: torch.nn.Module, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``b + g (s - b)`` with ``g`` written out element by element."""
    n, c, h, w = b.shape
    out = torch.empty_like(b)
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    if name == "scalar":
                        logit = gate.logit.item()
                    elif name == "channel":
                        logit = gate.logit[k, 0, 0].item()
                    elif name == "mtc":
                        logit = (
                            gate.backbone_weight[k].item() * b[i, k].max().item()
                            + gate.side_weight[k].item() * s[i, k].max().item()
                            + gate.bias[k].item()
                        )
                    else:  # spatial: a 7 x 7 conv over [mean_c b, max_c b, mean_c s, max_c s], zero padding
                        stats = torch.stack([b[i].mean(0), b[i].amax(0), s[i].mean(0), s[i].amax(0)])
                        logit = gate.conv.bias.item()
                        for m in range(4):
                            for dy in range(-3, 4):
                                for dx in range(-3, 4):
                                    if 0 <= y + dy < h and 0 <= x + dx < w:
                                        weight = gate.conv.weight[0, m, dy + 3, dx + 3].item()
                                        logit += weight * stats[m, y + dy, x + dx].item()
                    g = 1.0 / (1.0 + math.exp(-logit))
                    out[i, k, y, x] = (1 - g) * b[i, k, y, x] + g * s[i, k, y, x]
    return out


@pytest.mark.parametrize("name", CALIBRATION_GATES)
def test_gate_equation(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    b, s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64), torch.randn(2, 3, 4, 5, generator=gen)
    gate = create_calibration_gate(name, 3).double()
    _randomise(gate)
    with torch.no_grad():
        torch.testing.assert_close(gate(b, s.double()), _expected(name, gate, b, s.double()))


@pytest.mark.parametrize("name", CALIBRATION_GATES)
def test_gate_starts_mostly_backbone(name: str) -> None:
    b, s = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    g = 1 / (1 + math.exp(-GATE_INIT))
    torch.testing.assert_close(create_calibration_gate(name, 3)(b, s), b + g * (s - b))


def test_unknown_gate() -> None:
    with pytest.raises(ValueError, match="mtc"):
        create_calibration_gate("max", 3)


def _resnet_stages() -> tuple[Stages, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, channels=[16, 32, 64, 128]).eval()
    return Stages([copy.deepcopy(getattr(model, f"layer{i}")) for i in range(1, 5)]), torch.randn(2, 64, 8, 8)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "bn_scale"])
def test_prune_then_replay_widths(importance: str) -> None:
    stages, x = _resnet_stages()
    prune_stages(stages, x, [0.25, 0.5, 0.5, 0.75], importance=importance, round_to=8)
    widths = conv_widths(stages)
    assert all(w % 8 == 0 for w in widths.values())
    assert widths["stages.3.0.conv2"] == 32 and widths["stages.0.0.conv1"] == 8  # 128 * 0.25, 16 * 0.75 -> 8
    rebuilt, _ = _resnet_stages()
    assert prune_to_widths(rebuilt, x, widths) == []
    assert conv_widths(rebuilt) == widths
    rebuilt.load_state_dict(stages.state_dict(), strict=True)
    with torch.no_grad():
        for a, b in zip(rebuilt.eval()(x), stages.eval()(x)):
            assert torch.equal(a, b)


def test_replay_reports_impossible_widths() -> None:
    stages, x = _resnet_stages()
    widths = conv_widths(stages)
    assert prune_to_widths(stages, x, {**widths, "stages.0.0.conv1": 999}) == ["stages.0.0.conv1: 999 > 16 channels"]
    assert prune_to_widths(stages, x, {"nope": 3})[0] == "unknown layer 'nope'"
