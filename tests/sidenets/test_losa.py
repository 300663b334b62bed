"""LoSA: the side network never reaches into the backbone; every documented choice builds and trains."""

from __future__ import annotations

import itertools

import pytest
import torch

from autoside.errors import ConfigError
from autoside.sidenets import create_sidenet
from autoside.testing import blocks_recording_graph, random_batch, run_contract, small_vit_backbone, tiny_backbone


@pytest.mark.parametrize("make_backbone", [lambda: tiny_backbone("vit"), small_vit_backbone])
def test_no_block_records_a_graph_and_no_backbone_gradient(make_backbone, trained_backbone_params) -> None:
    model = create_sidenet("losa", make_backbone(), num_classes=3, channel_rank=8, token_rank=4)
    x, y = random_batch(model.backbone, num_classes=3)
    assert not any(blocks_recording_graph(model, x))
    assert trained_backbone_params(model, x, y) == []
    # Even a backbone block left trainable is never reached: the backbone runs without autograd.
    model.backbone.model.blocks[-1].requires_grad_(True)
    assert trained_backbone_params(model, x, y) == []


def test_losa_freezes_the_backbone_it_is_given(assert_family_freezes) -> None:
    assert_family_freezes(
        lambda b: create_sidenet("losa", b, num_classes=3, channel_rank=8, token_rank=4), tiny_backbone("vit")
    )


def test_starts_as_the_frozen_prediction() -> None:
    model = create_sidenet("losa_vit12_fmnist", small_vit_backbone(), num_classes=3).eval()
    x, _ = random_batch(model.backbone)
    with torch.no_grad():
        tokens = model.backbone.model.forward_features(x)  # blocks + final norm
        assert torch.allclose(model(x), model.head(tokens[:, 0]), atol=1e-5)


def test_small_vit_parameter_count() -> None:
    model = create_sidenet("losa", small_vit_backbone(), num_classes=3, channel_rank=16, token_rank=8)
    d, n = 96, 17
    channel = 2 * d + (d * 16 + 16) + (16 * d + d)
    token = 2 * d + (n * 8 + 8) + (8 * n + n)
    assert model.num_trainable(include_head=False) == 12 * (channel + token) + 2 * d  # + the final LayerNorm


OPTIONS = list(
    itertools.product(
        ["refine", "independent"], ["cls", "mean"], ["both", "channel", "token"], ["token_first", "channel_first"]
    )
)


@pytest.mark.parametrize(("update", "pool", "components", "order"), OPTIONS)
def test_every_choice_trains(update: str, pool: str, components: str, order: str) -> None:
    model = create_sidenet(
        "losa",
        tiny_backbone("vit"),
        num_classes=3,
        channel_rank=4,
        token_rank=4,
        update=update,
        pool=pool,
        mixer_components=components,
        mixer_order=order,
        mixer_depth=2,
        first_layer=1,
        layer_stride=2,
    )
    assert list(model.mixers) == [str(i) for i in range(1, 12, 2)]
    run_contract(model)


def test_update_rules_differ() -> None:
    torch.manual_seed(0)
    backbone = tiny_backbone("vit")
    a = create_sidenet("losa", backbone, num_classes=3, channel_rank=4, token_rank=4, update="refine").eval()
    b = create_sidenet("losa", backbone, num_classes=3, channel_rank=4, token_rank=4, update="independent").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.normal_(std=0.3)
        b.load_state_dict(a.state_dict())
        x, _ = random_batch(backbone)
        assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize(
    ("layout", "kwargs", "message"),
    [
        ("cnn", {}, r"sidenet.family: 'losa' needs a ViT backbone \(layout 'vit'\)"),
        ("swin", {}, r"sidenet.family: 'losa' needs a ViT backbone"),
        ("vit", {"channel_rank": 33}, r"sidenet.channel_rank: must be in 1\.\.32"),
        ("vit", {"token_rank": 18}, r"sidenet.token_rank: must be in 1\.\.17"),
        ("vit", {"first_layer": 12}, r"sidenet.first_layer: must be in 0\.\.11"),
        ("vit", {"mixer_depth": 0}, r"sidenet.mixer_depth: must be at least 1"),
        ("vit", {"pool": "max"}, r"sidenet.pool: 'max' is not one of 'cls', 'mean'"),
    ],
)
def test_bad_input(layout: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_sidenet("losa", tiny_backbone(layout), num_classes=3, **{"channel_rank": 8, "token_rank": 4, **kwargs})
