"""DTL / DTL+ against the paper and the official code: parameter counts, gradient path, bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from autoside.backbones import create_backbone
from autoside.errors import ConfigError
from autoside.sidenets import create_sidenet, resolve
from autoside.sidenets.dtl import DTLConfig
from autoside.testing import backbone_blocks, blocks_recording_graph, random_batch, small_vit_backbone, tiny_backbone
from autoside.tune.space import load_space


@pytest.fixture(scope="module")
def vit_b16():
    # Parameter counts need the real architecture, not its weights: build it on the meta device (no memory, no init).
    with torch.device("meta"):
        return create_backbone("vit_base_patch16_224", weights="random")


def _count(name: str, backbone, **kwargs) -> int:
    with torch.device("meta"):
        return create_sidenet(name, backbone, num_classes=10, **kwargs).num_trainable(include_head=False)


@pytest.mark.parametrize(("rank", "expected"), [(1, 18_432), (2, 36_864), (4, 73_728), (8, 147_456)])
def test_dtl_vit_b16_parameter_count(vit_b16, rank: int, expected: int) -> None:
    assert _count("dtl_vit_b16", vit_b16, rank=rank) == expected


@pytest.mark.parametrize(("kernel", "expected"), [(3, 43_776), (5, 56_064)])
def test_dtl_plus_vit_b16_parameter_count(vit_b16, kernel: int, expected: int) -> None:
    assert _count("dtl_plus_vit_b16", vit_b16, kernel_size=kernel) == expected


@pytest.fixture(scope="module")
def swin_b():
    with torch.device("meta"):
        return create_backbone("swin_base_patch4_window7_224", weights="random")


def test_dtl_swin_b_parameter_count(swin_b) -> None:
    assert resolve("dtl_swin_b").first_tap == 4
    assert _count("dtl_swin_b", swin_b) == 90_112


@pytest.mark.parametrize(("kernel", "official"), [(3, 107_392), (5, 138_112)])
def test_dtl_plus_swin_b_parameter_count_against_the_official_code(swin_b, kernel: int, official: int) -> None:
    """The official Swin-B script logs ``number of params for requires grad in backbone`` (every ``lora_`` parameter);
    no log of a run is published, so ``official`` is that figure computed from the official module definitions: one
    rank-4 map per block 4..23 (18 x 2 x 512 x 4 + 2 x 2 x 1024 x 4 = 90,112) plus a bias-free depthwise conv for each
    of the four stages ((128 + 256 + 512 + 1024) x k^2; the scripts use k = 3 or 5). autoside builds no conv for
    stages 1 and 2: no tap lies in them and none of their blocks is >= M = 15, so those (128 + 256) x k^2 weights never
    receive a gradient in the official model either."""
    dead = (128 + 256) * kernel**2
    assert _count("dtl_swin_b", swin_b, kernel_size=kernel) == official - dead


def test_swin_convs_only_for_stages_with_live_taps(swin_b) -> None:
    # Taps 22, 23 lie in the last stage only: the third stage merges (blocks 15..22) but has no side state to fuse.
    assert _count("dtl", swin_b, rank=2, first_tap=22, merge_from=15, kernel_size=3) == 2 * 2 * 1024 * 2 + 1024 * 9
    model = create_sidenet("dtl_swin_b", tiny_backbone("swin"), num_classes=3, kernel_size=3)
    assert sorted(model.fusions) == ["2", "3"]
    model = create_sidenet("dtl", tiny_backbone("swin"), num_classes=3, first_tap=22, merge_from=15, kernel_size=3)
    assert sorted(model.fusions) == ["3"] and sorted(int(k) for k in model.maps) == [22, 23]


def test_even_kernel_parameter_count(vit_b16) -> None:
    """k = 4, as the official ViT-B/16 scripts use on some VTAB tasks."""
    assert _count("dtl_plus_vit_b16", vit_b16, kernel_size=4) == 36_864 + 768 * 16


def test_spaces_reach_the_official_settings_and_are_checked_against_the_backbone(vit_b16, swin_b) -> None:
    spaces = Path(__file__).resolve().parents[2] / "search_spaces"
    for path, backbone, depth, drop_path in (("dtl.yaml", vit_b16, 12, 0.2), ("dtl_swin.yaml", swin_b, 24, 0.5)):
        space = load_space(spaces / path)
        params = {p.name: p for p in space.families[0].params}
        assert {0, 3, 4, 5} <= set(params["kernel_size"].choices)
        assert (params["merge_from"].low, params["merge_from"].high) == (1, depth)
        assert params["drop_path"].low == 0.0 and params["drop_path"].high == drop_path
        space.check_backbone(backbone.spec)
    assert resolve("dtl_swin_b").merge_from <= 24 and resolve("dtl_swin_b").first_tap <= params["first_tap"].high
    with pytest.raises(ConfigError, match=r"families\.dtl: sidenet\.merge_from: must be in 1\.\.12 .*merge_from=24"):
        space.check_backbone(vit_b16.spec)


def test_small_vit_parameter_count() -> None:
    backbone = small_vit_backbone()  # 12 blocks of width 96
    assert _count("dtl", backbone, rank=2) == 12 * 2 * 96 * 2
    assert _count("dtl", backbone, rank=2, kernel_size=3) == 12 * 2 * 96 * 2 + 96 * 9
    assert _count("dtl_plus_vit12_fmnist", backbone) == 12 * 2 * 96 * 4 + 96 * 9


@pytest.mark.parametrize("merge_from", [1, 7, 12])
def test_gradient_path_vit(merge_from: int, trained_backbone_params) -> None:
    model = create_sidenet("dtl", tiny_backbone("vit"), num_classes=3, merge_from=merge_from, kernel_size=3)
    x, y = random_batch(model.backbone, num_classes=3)
    # Blocks 1..M (0-indexed < M) see nothing trainable; the inputs of the later ones carry the side state.
    assert blocks_recording_graph(model, x) == [i >= merge_from for i in range(12)]
    assert trained_backbone_params(model, x, y) == []


def test_gradient_path_check_notices_a_trainable_backbone_block(trained_backbone_params) -> None:
    """The check above can fail: a block after M that trains (a leak) is on the loss's graph and is reported."""
    model = create_sidenet("dtl", tiny_backbone("vit"), num_classes=3, merge_from=7)
    x, y = random_batch(model.backbone, num_classes=3)
    model.backbone.model.blocks[9].requires_grad_(True)
    leaked = trained_backbone_params(model, x, y)
    assert leaked and all(n.startswith("model.blocks.9.") for n in leaked)


@pytest.mark.parametrize("layout", ["vit", "swin"])
def test_dtl_freezes_the_backbone_it_is_given(layout: str, assert_family_freezes) -> None:
    assert_family_freezes(
        lambda b: create_sidenet("dtl", b, num_classes=3, merge_from=12, kernel_size=3), tiny_backbone(layout)
    )


def test_gradient_path_small_vit() -> None:
    model = create_sidenet("dtl_vit12_fmnist", small_vit_backbone(), num_classes=3)
    x, _ = random_batch(model.backbone)
    assert blocks_recording_graph(model, x) == [i >= 7 for i in range(12)]


def test_gradient_path_swin() -> None:
    model = create_sidenet("dtl_swin_b", tiny_backbone("swin"), num_classes=3)
    x, _ = random_batch(model.backbone)
    assert blocks_recording_graph(model, x) == [i >= 15 for i in range(24)]
    assert sorted(int(k) for k in model.maps) == list(range(4, 24))


def test_zero_side_state_leaves_the_backbone_unchanged() -> None:
    model = create_sidenet("dtl_plus_vit12_fmnist", small_vit_backbone(), num_classes=3).eval()
    x, _ = random_batch(model.backbone)
    vit = model.backbone.model
    with torch.no_grad():
        tokens = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
        expected = model.head(vit.norm(tokens[:, vit.num_prefix_tokens :].mean(dim=1)))
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_side_state_reaches_the_output() -> None:
    model = create_sidenet("dtl_plus_vit12_fmnist", small_vit_backbone(), num_classes=3).eval()
    x, _ = random_batch(model.backbone)
    with torch.no_grad():
        before = model(x)
        for m in model.maps.values():
            m.B.normal_(std=0.5)
        assert not torch.allclose(model(x), before)


def test_drop_path_is_driven_by_the_side_network() -> None:
    model = create_sidenet("dtl", tiny_backbone("vit"), num_classes=3, drop_path=0.5)
    x, _ = random_batch(model.backbone, batch_size=8)
    model.train()
    assert not model.backbone.model.training
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x)), "drop-path should be active in training"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert [m.rate for m in backbone_blocks(model.backbone)[-1].children() if hasattr(m, "rate")] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"rank": 33}, "sidenet.rank", "1..32"),
        ({"merge_from": 13}, "sidenet.merge_from", "1..12"),
        ({"merge_from": 0}, "sidenet.merge_from", "at least 1"),
        ({"first_tap": 12}, "sidenet.first_tap", "0..11"),
        ({"last_tap": 40}, "sidenet.last_tap", "-1 or in 0..11"),
        ({"kernel_size": -1}, "sidenet.kernel_size", "0 (DTL) or a kernel size"),
        ({"beta": 0}, "sidenet.beta", "positive"),
        ({"drop_path": 1.0}, "sidenet.drop_path", "[0, 1)"),
    ],
)
def test_bad_config_names_field_and_range(kwargs: dict, field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_sidenet("dtl", tiny_backbone("vit"), num_classes=3, **kwargs)
    assert str(info.value).startswith(field) and allowed in str(info.value)


def test_merge_from_checked_against_swin_depth() -> None:
    with pytest.raises(ConfigError, match=r"sidenet.merge_from: must be in 1\.\.24"):
        create_sidenet("dtl", tiny_backbone("swin"), num_classes=3, merge_from=25)


def test_kernel_needs_a_patch_grid() -> None:
    spec = dataclasses.replace(tiny_backbone("vit").spec, grid_size=None)
    DTLConfig(kernel_size=0).check_backbone(spec)
    with pytest.raises(ConfigError, match=r"sidenet.kernel_size: must be 0 .*allowed: 0"):
        DTLConfig(kernel_size=3).check_backbone(spec)


def test_dtl_on_cnn_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"sidenet.family: 'dtl' needs a ViT or Swin backbone"):
        create_sidenet("dtl_vit_b16", tiny_backbone("cnn"), num_classes=3)


def test_later_merge_saves_activation_memory() -> None:
    from autoside.memory.meter import MemoryMeter

    saved = {}
    for merge_from in (1, 12):
        model = create_sidenet("dtl", tiny_backbone("vit"), num_classes=3, merge_from=merge_from).train()
        x, y = random_batch(model.backbone, batch_size=4, num_classes=3)
        with MemoryMeter("cpu") as meter:
            meter.register_model(model)
            meter.step()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        saved[merge_from] = meter.report().saved_activation_bytes
    assert saved[12] < saved[1] / 2
