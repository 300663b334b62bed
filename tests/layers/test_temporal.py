"""Temporal modules: the factory, shapes, and which frames and pixels each module lets an output see."""

from __future__ import annotations

import pytest
import torch

from autoside.layers import (
    TEMPORAL_MODULES,
    TemporalAttention,
    TemporalConv,
    TemporalShift,
    create_temporal,
    get_temporal_layer,
    shift_frames,
)


def test_factory_by_name_and_class() -> None:
    assert get_temporal_layer("none") is None and create_temporal("none", 8) is None
    assert get_temporal_layer("conv") is TemporalConv and get_temporal_layer(TemporalShift) is TemporalShift
    # Knobs of other modules are ignored, so one config can carry all of them.
    module = create_temporal("attn", 8, kernel=5, heads=2, fraction=0.5)
    assert isinstance(module, TemporalAttention) and module.attn.num_heads == 2
    with pytest.raises(ValueError, match="allowed: none, conv, attn, shift"):
        get_temporal_layer("lstm")


@pytest.mark.parametrize("name", [n for n in TEMPORAL_MODULES if n != "none"])
def test_shape_is_kept_and_every_parameter_learns(name: str) -> None:
    module = create_temporal(name, 8, heads=2)
    x = torch.randn(2, 8, 5, 3, 4)
    out = module(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def _reach(module: torch.nn.Module, frame: int = 2, pixel: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Which (frame, y, x) outputs change when one input token changes: ``(T, H, W)`` booleans."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 7, 5, 5)
    y = x.clone()
    y[0, :, frame, pixel[0], pixel[1]] += 1.0
    with torch.no_grad():
        diff = (module(y) - module(x)).abs().amax(dim=(0, 1))
    return diff > 1e-6


@pytest.mark.parametrize(("kernel", "spatial"), [(3, 1), (5, 1), (7, 1), (3, 3)])
def test_conv_reaches_kernel_frames_and_spatial_extent(kernel: int, spatial: int) -> None:
    reach = _reach(TemporalConv(8, kernel=kernel, spatial_kernel=spatial))
    frames = reach.any(dim=(1, 2)).nonzero().flatten().tolist()
    assert frames == [t for t in range(7) if abs(t - 2) <= kernel // 2]
    pixels = reach.any(dim=0).nonzero().tolist()
    assert pixels == [[y, x] for y in range(5) for x in range(5) if abs(y - 2) <= spatial // 2 >= abs(x - 2)]


def test_conv_counts_like_side4video_bottleneck() -> None:
    d = 320  # pointwise (with bias), depthwise 3x1x1 (with bias), pointwise (with bias)
    assert sum(p.numel() for p in TemporalConv(d).parameters()) == 2 * (d * d + d) + 3 * d + d


def test_attention_sees_every_frame_of_its_pixel_and_knows_their_order() -> None:
    module = TemporalAttention(8, heads=2)
    reach = _reach(module)
    assert reach[:, 2, 2].all() and reach.sum() == 7
    x = torch.randn(1, 8, 6, 2, 2)
    with torch.no_grad():
        # Without the frame embedding attention would be permutation-equivariant and could not tell forward from back.
        assert not torch.allclose(module(x.flip(2)).flip(2), module(x), atol=1e-4)


def test_shift_moves_a_fraction_of_channels_one_frame() -> None:
    x = torch.arange(2 * 8 * 4, dtype=torch.float32).reshape(2, 8, 4, 1, 1)
    out = shift_frames(x, 2)
    assert torch.equal(out[:, :2, :-1], x[:, :2, 1:]) and (out[:, :2, -1] == 0).all()
    assert torch.equal(out[:, 2:4, 1:], x[:, 2:4, :-1]) and (out[:, 2:4, 0] == 0).all()
    assert torch.equal(out[:, 4:], x[:, 4:])
    module = TemporalShift(8, fraction=0.5)
    assert module.fold == 2
    reach = _reach(module)
    assert reach.any(dim=(1, 2)).nonzero().flatten().tolist() == [1, 2, 3] and reach.any(dim=0).sum() == 1
