"""Side4Video: the paper's parameter counts, an independent forward pass, and the frozen backbone it never touches."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from autoside.errors import ConfigError
from autoside.sidenets import create_sidenet, resolve
from autoside.testing import blocks_recording_graph, random_batch, run_contract, timm_backbone, tiny_backbone


@pytest.mark.parametrize(
    ("timm_model", "preset", "expected"),
    [
        ("vit_base_patch16_clip_224", "side4video_vit_b16", 21_056_832),
        ("vit_large_patch14_clip_224", "side4video_vit_l14", 102_019_584),
    ],
)
def test_paper_parameter_counts(timm_model: str, preset: str, expected: int) -> None:
    """Side-network parameters of the CLIP ViT-B/16 (s = 320) and ViT-L/14 (s = 512) models, all layers, classifier
    head excluded; the backbone is random and built on the meta device (its weights do not matter here)."""
    with torch.device("meta"):
        backbone = timm_backbone(timm_model, {}, 224)
    model = create_sidenet(preset, backbone, num_classes=400)
    assert model.num_trainable(include_head=False) == expected


def test_layer_sets() -> None:
    config = resolve("side4video")
    assert config.layers(12) == tuple(range(12))
    assert config.replace(layer_set="every_other").layers(12) == (1, 3, 5, 7, 9, 11)
    assert config.replace(layer_set="every_other").layers(5) == (0, 2, 4)
    assert config.replace(layer_set="top_half").layers(24) == tuple(range(12, 24))


def test_bad_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^sidenet\.side_width: "):
        resolve("side4video", side_width=200, head_dim=64)  # 3 heads do not divide 200
    with pytest.raises(ConfigError, match=r"^sidenet\.temporal_kernel: "):
        resolve("side4video", temporal_kernel=4)
    with pytest.raises(ConfigError, match=r"^sidenet\.temporal: "):
        resolve("side4video", temporal="lstm")
    with pytest.raises(ConfigError, match=r"^sidenet\.family: 'side4video' needs a ViT"):
        create_sidenet("side4video", tiny_backbone("cnn"), num_classes=3)


def test_backbone_runs_without_a_graph_and_gets_no_gradient() -> None:
    model = create_sidenet("side4video", tiny_backbone("vit"), num_classes=3, side_width=32)
    x, y = random_batch(model.backbone, frames=4)
    assert not any(blocks_recording_graph(model, x))
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.side_parameters())


def test_an_image_is_a_one_frame_clip() -> None:
    model = create_sidenet("side4video", tiny_backbone("vit"), num_classes=3, side_width=32).eval()
    x, _ = random_batch(model.backbone)
    with torch.no_grad():
        assert torch.equal(model(x), model(x[:, None]))


def test_frames_knob_reads_evenly_spaced_frames() -> None:
    model = create_sidenet("side4video", tiny_backbone("vit"), num_classes=3, side_width=32, frames=2).eval()
    x, _ = random_batch(model.backbone, frames=6)
    with torch.no_grad():
        assert torch.equal(model(x), model(x[:, [1, 4]]))  # centres of the segments 0-2 and 3-5
        assert torch.equal(model(x[:, :1]), model(x[:, [0, 0]]))  # a still image is a static clip
    with pytest.raises(ConfigError, match=r"^sidenet\.frames: 4 is more than the 3 frames"):
        create_sidenet("side4video", model.backbone, num_classes=3, side_width=32, frames=4)(x[:, :3])


OPTIONS = list(itertools.product(["none", "conv", "attn", "shift"], [True, False], ["all", "every_other", "top_half"]))


@pytest.mark.parametrize(("temporal", "cls_shift", "layer_set"), OPTIONS)
def test_every_choice_trains(temporal: str, cls_shift: bool, layer_set: str) -> None:
    model = create_sidenet(
        "side4video",
        tiny_backbone("vit"),
        num_classes=3,
        side_width=32,
        head_dim=16,
        temporal=temporal,
        cls_shift=cls_shift,
        layer_set=layer_set,
        temporal_kernel=5,
        temporal_spatial_kernel=3,
    )
    run_contract(model)


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm3d) -> torch.Tensor:
    shape = (1, -1, 1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def _ln(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _reference(model, clip: torch.Tensor) -> torch.Tensor:
    """Side4Video in eval mode written out equation by equation, on ``(B, C, T, H, W)`` maps and explicit loops."""
    b, t = clip.shape[:2]
    gh, gw = model.grid
    n, s, heads = gh * gw, model.config.side_width, model.config.num_heads
    vit = model.backbone.model
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(clip.flatten(0, 1))))
    layer_out = []
    for block in vit.blocks:
        h = block(h)
        layer_out.append(h)
    x = clip.permute(0, 2, 1, 3, 4)  # B C T H W
    p = model.backbone.spec.reductions[0]
    side = _bn(F.conv3d(x, model.stem.weight, model.stem.bias, stride=(1, p, p), padding=(1, 0, 0)), model.stem_norm)
    side = side.reshape(b, s, t, n)  # B s T N
    for i in model.taps:
        blk = model.blocks[str(i)]
        z = _ln(layer_out[i], model.norms[str(i)]) @ model.projs[str(i)].weight.T + model.projs[str(i)].bias
        z = z.reshape(b, t, 1 + n, s).permute(0, 3, 1, 2)  # B s T 1+N
        side = 0.5 * side + 0.5 * z[..., 1:]
        # temporal: pointwise, depthwise 3 along time (zero padding), pointwise
        y = _bn(side.reshape(b, s, t, gh, gw), blk.temporal_norm).reshape(b, s, t, n)
        conv = blk.temporal
        a = torch.einsum("oc,bctn->botn", conv.reduce.weight[:, :, 0, 0, 0], y) + conv.reduce.bias.view(1, -1, 1, 1)
        k = conv.depthwise.weight[:, 0, :, 0, 0]  # hidden x 3
        padded = F.pad(a, (0, 0, 1, 1))
        d = sum(k[:, j].view(1, -1, 1, 1) * padded[:, :, j : j + t] for j in range(3))
        d = d + conv.depthwise.bias.view(1, -1, 1, 1)
        e = torch.einsum("oc,bctn->botn", conv.expand.weight[:, :, 0, 0, 0], d) + conv.expand.bias.view(1, -1, 1, 1)
        side = side + e
        # CLS shifted in time: first half of the channels from t+1, second half from t-1
        cls = z[..., 0]  # B s T
        shifted = torch.zeros_like(cls)
        half = s // 2
        for f in range(t):
            if f + 1 < t:
                shifted[:, :half, f] = cls[:, :half, f + 1]
            if f >= 1:
                shifted[:, half:, f] = cls[:, half:, f - 1]
        tokens = side.permute(0, 2, 3, 1)  # B T N s
        kv = _ln(torch.cat([shifted.permute(0, 2, 1)[:, :, None], tokens + model.pos_embed], dim=2), blk.attn_norm)
        wq, wk, wv = blk.attn.in_proj_weight.chunk(3)
        bq, bk, bv = blk.attn.in_proj_bias.chunk(3)
        q, key, val = kv[:, :, 1:] @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
        dh = s // heads
        outs = []
        for hd in range(heads):
            sl = slice(hd * dh, (hd + 1) * dh)
            att = torch.softmax(q[..., sl] @ key[..., sl].transpose(-1, -2) / math.sqrt(dh), dim=-1)
            outs.append(att @ val[..., sl])
        attn = torch.cat(outs, dim=-1) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        tokens = tokens + attn
        normed = _bn(tokens.permute(0, 3, 1, 2).reshape(b, s, t, gh, gw), blk.mlp_norm).reshape(b, s, t, n)
        hidden = F.gelu(normed.permute(0, 2, 3, 1) @ blk.mlp[0].weight.T + blk.mlp[0].bias)
        tokens = tokens + hidden @ blk.mlp[2].weight.T + blk.mlp[2].bias
        side = tokens.permute(0, 3, 1, 2)
    pooled = _bn(side.reshape(b, s, t, gh, gw), model.head_norm).mean(dim=(2, 3, 4))
    return pooled @ model.head.weight.T + model.head.bias


def test_forward_matches_the_equations() -> None:
    torch.manual_seed(0)
    # Top half (6 of 12 layers): with every layer the stem's share of the output (0.5 ** 12) hides below the tolerance.
    model = create_sidenet(
        "side4video", tiny_backbone("vit"), num_classes=5, side_width=64, head_dim=16, layer_set="top_half"
    ).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm3d, torch.nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
        x, _ = random_batch(model.backbone, frames=4)
        assert torch.allclose(model(x), _reference(model, x), atol=1e-5, rtol=1e-5)
