"""Shared blocks in autoside.layers."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from autoside.layers import (
    DepthwiseFusion,
    LowRankLinear,
    LowRankMixer,
    SideDropPath,
    Swish,
    get_act_layer,
    set_side_drop_path,
    swish,
)


def test_low_rank_linear_starts_at_zero() -> None:
    layer = LowRankLinear(12, 10, rank=3)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (12 + 10)
    assert layer.A.abs().sum() > 0 and torch.count_nonzero(layer.B) == 0
    x = torch.randn(2, 5, 12)
    assert torch.equal(layer(x), torch.zeros(2, 5, 10))
    with torch.no_grad():
        layer.B.normal_()
    assert torch.allclose(layer(x), x @ (layer.B @ layer.A).t(), atol=1e-5)
    with pytest.raises(ValueError):
        LowRankLinear(4, 4, rank=0)


@pytest.mark.parametrize(
    ("components", "order", "kinds"),
    [
        ("both", "token_first", ["TokenMixer", "ChannelMixer"]),
        ("both", "channel_first", ["ChannelMixer", "TokenMixer"]),
        ("channel", "token_first", ["ChannelMixer"]),
        ("token", "channel_first", ["TokenMixer"]),
    ],
)
def test_mixer_structure_and_zero_update(components: str, order: str, kinds: list[str]) -> None:
    mixer = LowRankMixer(8, 5, channel_rank=2, token_rank=3, depth=2, order=order, components=components)
    assert [type(m).__name__ for m in mixer.layers] == kinds * 2
    x = torch.randn(2, 5, 8)
    assert torch.equal(mixer(x), torch.zeros_like(x))


def test_token_mixer_mixes_tokens_and_channel_mixer_does_not() -> None:
    x = torch.randn(1, 5, 8)
    for components, mixes_tokens in (("token", True), ("channel", False)):
        mixer = LowRankMixer(8, 5, channel_rank=2, token_rank=3, components=components)
        with torch.no_grad():
            for p in mixer.parameters():
                p.normal_()
        y = x.clone()
        y[:, 0] += torch.randn(8)  # change token 0 only (not by a constant: LayerNorm would remove it)
        changed = (mixer(y) - mixer(x))[:, 1:].abs().max() > 1e-6
        assert bool(changed) == mixes_tokens


def test_swish() -> None:
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(swish(x, 1.0), F.silu(x))
    assert torch.allclose(Swish(100.0)(x), F.relu(x), atol=1e-3)


def test_depthwise_fusion_bypasses_prefix_tokens() -> None:
    fusion = DepthwiseFusion(4, 3, grid_size=(3, 3), num_prefix_tokens=1)
    assert sum(p.numel() for p in fusion.parameters()) == 4 * 9
    x = torch.randn(2, 10, 4)
    y = fusion(x)
    assert torch.equal(y[:, 0], x[:, 0])
    grid = x[:, 1:].transpose(1, 2).reshape(2, 4, 3, 3)
    expected = F.conv2d(grid, fusion.conv.weight, padding=1, groups=4).flatten(2).transpose(1, 2)
    assert torch.allclose(y[:, 1:], expected, atol=1e-6)
    nhwc = grid.permute(0, 2, 3, 1)
    assert torch.allclose(fusion(nhwc), expected.reshape(2, 3, 3, 4), atol=1e-6)
    with pytest.raises(ValueError):
        DepthwiseFusion(4, 0)


@pytest.mark.parametrize("kernel", [2, 4])
def test_even_fusion_kernel_pads_like_pytorch_same(kernel: int) -> None:
    """Even kernels (DTL's official ViT scripts use 4) put the extra padding after the grid, as ``padding='same'``
    does in the official code; checked on a non-square grid against PyTorch's own 'same' convolution."""
    fusion = DepthwiseFusion(3, kernel, grid_size=(4, 5), num_prefix_tokens=1)
    x = torch.randn(2, 21, 3)
    grid = x[:, 1:].transpose(1, 2).reshape(2, 3, 4, 5)
    with warnings.catch_warnings():  # PyTorch's own path (the official code's) warns once about the padded copy
        warnings.simplefilter("ignore")
        expected = F.conv2d(grid, fusion.conv.weight, padding="same", groups=3).flatten(2).transpose(1, 2)
    y = fusion(x)
    assert y.shape == x.shape and torch.equal(y[:, 0], x[:, 0])
    assert torch.allclose(y[:, 1:], expected, atol=1e-6)


def test_side_drop_path() -> None:
    drop = SideDropPath(0.5)
    x = torch.ones(64, 3)
    assert torch.equal(drop(x), x)
    drop.active = True
    torch.manual_seed(0)
    y = drop(x)
    kept = (y[:, 0] > 0).float().mean()
    assert 0.2 < kept < 0.8 and set(y.unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError):
        set_side_drop_path(torch.nn.Linear(2, 2), 0.1)


def test_get_act_layer() -> None:
    assert get_act_layer("gelu") is torch.nn.GELU and get_act_layer(torch.nn.ReLU) is torch.nn.ReLU
    with pytest.raises(ValueError, match="unknown activation"):
        get_act_layer("nope")


def test_mixer_recompute_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    fast = LowRankMixer(8, 5, channel_rank=2, token_rank=3, depth=2, recompute=False)
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_()
    lean = LowRankMixer(8, 5, channel_rank=2, token_rank=3, depth=2, recompute=True)
    lean.load_state_dict(fast.state_dict())
    x = torch.randn(2, 5, 8)
    fast(x).square().sum().backward()
    lean(x).square().sum().backward()
    for (name, a), b in zip(fast.named_parameters(), lean.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
