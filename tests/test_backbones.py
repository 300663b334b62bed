import shutil

import pytest
import torch

from autoside.backbones import WeightsSource, _verify, create_backbone, offline_weights, sha256_file
from autoside.errors import ConfigError, WeightsError


@pytest.fixture(scope="module")
def effnet():
    return create_backbone("tf_efficientnet_lite0", image_size=32)


def test_offline_efficientnet_loads_strictly_and_is_frozen(effnet):
    spec = effnet.spec
    assert spec.weights == "pretrained:tf_efficientnet_lite0"
    assert spec.sha256 == sha256_file(offline_weights()["tf_efficientnet_lite0"].path)
    assert spec.layout == "cnn" and spec.widths == (16, 24, 40, 112, 320) and spec.num_features == 1280
    assert not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.model.training  # a frozen backbone stays in eval mode
    # Pretrained weights differ from timm's random init (the load really happened).
    random = create_backbone("tf_efficientnet_lite0", weights="random", image_size=32)
    assert not torch.equal(effnet.model.conv_stem.weight, random.model.conv_stem.weight)


def test_intermediates_per_stage(effnet):
    feats = effnet.intermediates(torch.randn(2, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(effnet.spec.widths)


def test_vit_spec_and_token_taps():
    vit = create_backbone("vit_tiny_patch16_224", weights="random", image_size=32)
    spec = vit.spec
    assert (spec.layout, spec.num_taps, spec.grid_size, spec.num_prefix_tokens) == ("vit", 12, (2, 2), 1)
    taps = vit.intermediates(torch.randn(2, 3, 32, 32), indices=[0, 11])
    assert [t.shape for t in taps] == [torch.Size([2, 4, 192])] * 2


def test_no_backbone_parameter_gets_a_gradient(effnet):
    head = torch.nn.Linear(effnet.spec.num_features, 3)
    x = torch.randn(2, 3, 32, 32)
    head(effnet(x)).sum().backward()
    assert all(p.grad is None for p in effnet.parameters())
    assert head.weight.grad is not None


def test_image_size_must_divide_patch():
    with pytest.raises(ConfigError, match="image_size: 30 is not divisible by the patch size 16"):
        create_backbone("vit_tiny_patch16_224", weights="random", image_size=30)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="backbone.name: 'vit_tinyy' is not a timm model"):
        create_backbone("vit_tinyy")


def test_pretrained_without_network_names_both_ways_out():
    with pytest.raises(WeightsError, match=r"backbone.checkpoint=PATH.*backbone.download=true"):
        create_backbone("resnet10t", image_size=32)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("resnet10t", weights="random", image_size=32)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = create_backbone("resnet10t", checkpoint=path, image_size=32)
    assert loaded.spec.sha256 == sha256_file(path) and loaded.spec.weights == "checkpoint:resnet10t.safetensors"
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), source(x))
    with pytest.raises(WeightsError, match=r"does not match timm model .*missing keys"):
        create_backbone("tf_efficientnet_lite0", checkpoint=path, image_size=32)


def test_corrupt_checkpoint_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        create_backbone("resnet10t", checkpoint=bad, image_size=32)
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet10t", checkpoint=tmp_path / "missing.pth", image_size=32)


def test_registered_weights_checksum_mismatch(tmp_path):
    real = offline_weights()["tf_efficientnet_lite0"]
    copy = tmp_path / "weights.pth"
    shutil.copy(real.path, copy)
    with open(copy, "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\x13\x37")
    corrupt = WeightsSource(**{**real.__dict__, "path": copy})
    with pytest.raises(WeightsError, match="checksum mismatch for backbone 'tf_efficientnet_lite0'"):
        _verify(corrupt)


def test_shipped_vit_loads_and_corruption_is_a_checksum_error(tmp_path, monkeypatch):
    import autoside.backbones as backbones

    vit = create_backbone("vit12_fmnist")
    assert vit.spec.weights == "pretrained:vit12_fmnist" and vit.spec.num_taps == 12 and vit.spec.grid_size == (4, 4)
    copy = tmp_path / "weights"
    shutil.copytree(backbones.WEIGHTS_DIR, copy)
    with open(copy / "vit12_fmnist.safetensors", "r+b") as fh:
        fh.seek(-100, 2)
        fh.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", copy)
    with pytest.raises(WeightsError, match=r"vit12_fmnist.safetensors: checksum mismatch for backbone 'vit12_fmnist'"):
        create_backbone("vit12_fmnist")
