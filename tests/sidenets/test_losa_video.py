"""LoSA for video: starts as the frozen per-frame prediction, mixes time only through its temporal parts, counts."""

from __future__ import annotations

import itertools

import pytest
import torch

from autoside.errors import ConfigError
from autoside.sidenets import create_sidenet, resolve
from autoside.testing import random_batch, run_contract, small_vit_backbone, tiny_backbone


def test_starts_as_the_frozen_per_frame_prediction() -> None:
    model = create_sidenet("losa_video_vit12_fmnist", small_vit_backbone(), num_classes=3, frames=4).eval()
    x, _ = random_batch(model.backbone, frames=4)
    with torch.no_grad():
        tokens = model.backbone.model.forward_features(x.flatten(0, 1))  # blocks + final norm, frame by frame
        expected = model.head(tokens[:, 0]).unflatten(0, (2, 4)).mean(dim=1)
        assert torch.allclose(model(x), expected, atol=1e-5)


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("token_mixing", ["factorised", "joint"])
def test_frame_order_reaches_the_prediction_only_through_temporal_mixing(token_mixing: str) -> None:
    model = create_sidenet(
        "losa_video",
        tiny_backbone("vit"),
        num_classes=3,
        channel_rank=4,
        token_rank=4,
        frames=4,
        temporal_rank=2,
        token_mixing=token_mixing,
    ).eval()
    x, _ = random_batch(model.backbone, frames=4)
    order = [2, 0, 3, 1]
    with torch.no_grad():
        for mixer in model.mixers.values():
            _randomise(mixer.mixer if token_mixing == "factorised" else mixer.mixer.layers[1])  # spatial / channels
        # Per-frame mixing only: the clip's prediction is the mean over frames, blind to their order.
        assert torch.allclose(model(x), model(x[:, order]), atol=1e-5)
        for mixer in model.mixers.values():
            _randomise(mixer.time_mixer if token_mixing == "factorised" else mixer.mixer.layers[0])
        assert not torch.allclose(model(x), model(x[:, order]), atol=1e-4)


def test_factorised_adds_one_temporal_mixer_per_layer() -> None:
    backbone = small_vit_backbone()
    d, t, r = 96, 8, 4
    image = create_sidenet("losa_vit12_fmnist", backbone, num_classes=3).num_trainable(include_head=False)
    video = create_sidenet("losa_video_vit12_fmnist", backbone, num_classes=3).num_trainable(include_head=False)
    assert video - image == 12 * (2 * d + (t * r + r) + (r * t + t))  # LayerNorm + T -> r -> T


def test_bad_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^sidenet\.temporal_rank: must be in 1\.\.4"):
        resolve("losa_video", frames=4, temporal_rank=5)
    with pytest.raises(ConfigError, match=r"^sidenet\.family: 'losa_video' needs a ViT"):
        create_sidenet("losa_video", tiny_backbone("cnn"), num_classes=3)


@pytest.mark.parametrize(
    ("token_mixing", "temporal"), list(itertools.product(["factorised", "joint"], ["none", "conv", "attn", "shift"]))
)
def test_every_choice_trains(token_mixing: str, temporal: str) -> None:
    model = create_sidenet(
        "losa_video",
        tiny_backbone("vit"),
        num_classes=3,
        channel_rank=4,
        token_rank=4,
        frames=3,
        temporal_rank=2,
        token_mixing=token_mixing,
        temporal=temporal,
    )
    run_contract(model)
