"""LoSA against a plainly written forward of the update rule in ``autoside/sidenets/losa.py``'s docstring (Mercea et
al., CVPR 2024), with non-zero weights everywhere: logits and gradients must match.

With ``b_i`` the output of ViT block ``i`` (all tokens) and ``h_0 = 0``, at each adapted layer ``i``:

    z   = b_i + h_{i-1}   (update "refine")   or   b_i   (update "independent")
    h_i = h_{i-1} + g_i(z),   g_i(z) = mixer_i(z) - z

``mixer_i`` applies its mixer blocks *in sequence*, each a pre-norm residual low-rank MLP:

    token mixing:    y <- y + (W2 gelu(W1 LN(y)^T + c1) + c2)^T    (MLPs over the N tokens, per channel)
    channel mixing:  y <- y + W2 gelu(W1 LN(y) + c1) + c2          (MLPs over the d channels, per token)

in the order ``mixer_order`` names, ``mixer_depth`` times. Layers that are not adapted carry ``h`` over. The logits
come from the CLS token (or the mean of the patch tokens) of ``b_L + h_L`` through LayerNorm, dropout and a Linear.
Everything runs in float64 so that any difference in the maths shows, not rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoside.sidenets import create_sidenet
from autoside.testing import random_batch, tiny_backbone


def _ln(y: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _mlp(y: torch.Tensor, mlp) -> torch.Tensor:
    return F.linear(F.gelu(F.linear(y, mlp.down.weight, mlp.down.bias)), mlp.up.weight, mlp.up.bias)


def _mixer_update(mixer, config, z: torch.Tensor) -> torch.Tensor:
    kinds = {"both": ["token", "channel"], "token": ["token"], "channel": ["channel"]}[config.mixer_components]
    if config.mixer_order == "channel_first":
        kinds = kinds[::-1]
    kinds = kinds * config.mixer_depth
    assert len(mixer.layers) == len(kinds)
    y = z
    for kind, branch in zip(kinds, mixer.layers):
        assert type(branch).__name__ == ("TokenMixer" if kind == "token" else "ChannelMixer")
        n = _ln(y, branch.norm)
        y = y + (_mlp(n.transpose(1, 2), branch.mlp).transpose(1, 2) if kind == "token" else _mlp(n, branch.mlp))
    return y - z


def reference_losa(model, images: torch.Tensor) -> torch.Tensor:
    vit, config = model.backbone.model, model.config
    x = vit.patch_embed(images)
    x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], dim=1) + vit.pos_embed
    outputs = []
    for block in vit.blocks:
        x = block(x)
        outputs.append(x)
    h = torch.zeros_like(x)
    for i, b in enumerate(outputs):
        if i >= config.first_layer and (i - config.first_layer) % config.layer_stride == 0:
            z = b + h if config.update == "refine" else b
            h = h + _mixer_update(model.mixers[str(i)], config, z)
    tokens = outputs[-1] + h
    pooled = tokens[:, 0] if config.pool == "cls" else tokens[:, 1:].mean(dim=1)
    return model.head(_ln(pooled, model.norm))


CASES = [
    {"mixer_depth": 2},
    {"mixer_depth": 1, "mixer_order": "channel_first", "first_layer": 1, "layer_stride": 3, "pool": "mean"},
    {"mixer_depth": 2, "update": "independent"},
]


@pytest.mark.parametrize("kwargs", CASES, ids=["refine-depth2", "channel-first-strided-mean", "independent"])
def test_logits_and_gradients_match_the_update_rule(kwargs: dict) -> None:
    model = create_sidenet("losa", tiny_backbone("vit"), num_classes=4, channel_rank=5, token_rank=3, **kwargs).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight non-zero, norms away from the identity
        for p in model.side_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    model.train()
    x, y = random_batch(model.backbone, batch_size=3, num_classes=4)
    x = x.double()
    params = model.side_parameters()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    got = model(x)
    got_grads = torch.autograd.grad(F.cross_entropy(got, y), params)
    want = reference_losa(model, x)
    want_grads = torch.autograd.grad(F.cross_entropy(want, y), params)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-10), f"logits differ by {(got - want).abs().max():.3g}"
    for name, a, b in zip(names, got_grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), f"gradient of {name} differs by {(a - b).abs().max():.3g}"
