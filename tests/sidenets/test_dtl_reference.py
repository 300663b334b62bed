"""DTL / DTL+ against a plainly written forward that follows the paper's equations (Fu et al., AAAI 2024, Sec. 3 and
the official code's ``forward``), step by step, with non-zero side weights: logits and gradients must match.

Per block ``i`` (0-indexed) of ``L``, with ``M`` 1-indexed as in the paper and ``x_i`` the input of block ``i``:

    h   <- h + B_i A_i x_i                      for tapped blocks (the block's input, every token)
    x_{i+1} = block_i(x_i)
    x_{i+1} <- x_{i+1} + F(swish_beta(h))       for blocks M..L (i + 1 >= M); swish_beta(h) = h * sigmoid(beta * h)

``F`` is the identity (DTL) or a depthwise k x k convolution over the patch grid with "same" zero padding (DTL+;
prefix tokens bypass it). The head is the mean of the patch tokens, the backbone's final norm and a Linear (Swin:
norm, then the mean over the grid). On Swin ``h`` restarts at zero in every stage, so a stage that ends before block
``M`` contributes nothing. Everything runs in float64 so that any difference in the maths shows, not rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoside.sidenets import create_sidenet
from autoside.testing import random_batch, tiny_backbone


def _swish(h: torch.Tensor, beta: float) -> torch.Tensor:
    return h * torch.sigmoid(beta * h)


def _depthwise_same(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise cross-correlation of a ``(B, H, W, C)`` map with ``weight`` ``(C, 1, k, k)``, written as a sum of
    shifted copies; "same" zero padding puts ``(k - 1) // 2`` rows/columns before and ``k // 2`` after."""
    k = weight.shape[-1]
    _, height, width, _ = g.shape
    before, after = (k - 1) // 2, k // 2
    padded = F.pad(g, (0, 0, before, after, before, after))
    return sum(padded[:, u : u + height, v : v + width, :] * weight[:, 0, u, v] for u in range(k) for v in range(k))


def _side_map(model, i: int, x: torch.Tensor) -> torch.Tensor:
    a, b = model.maps[str(i)].A, model.maps[str(i)].B  # A: r x d, B: d x r
    return x @ a.T @ b.T


def reference_vit(model, images: torch.Tensor) -> torch.Tensor:
    vit, config = model.backbone.model, model.config
    depth = len(vit.blocks)
    taps = range(config.first_tap, depth if config.last_tap == -1 else config.last_tap + 1)
    x = vit.patch_embed(images)
    x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], dim=1) + vit.pos_embed
    h = torch.zeros_like(x)
    grid = vit.patch_embed.grid_size
    for i, block in enumerate(vit.blocks):
        if i in taps:
            h = h + _side_map(model, i, x)
        x = block(x)
        if i + 1 >= config.merge_from:
            g = _swish(h, config.beta)
            if config.kernel_size:
                patches = g[:, 1:].reshape(len(g), *grid, -1)
                fused = _depthwise_same(patches, model.fusions["0"].conv.weight).reshape(len(g), -1, g.shape[-1])
                g = torch.cat([g[:, :1], fused], dim=1)
            x = x + g
    return model.head(vit.norm(x[:, 1:].mean(dim=1)))


def reference_swin(model, images: torch.Tensor) -> torch.Tensor:
    swin, config = model.backbone.model, model.config
    depth = sum(len(stage.blocks) for stage in swin.layers)
    taps = range(config.first_tap, depth if config.last_tap == -1 else config.last_tap + 1)
    x = swin.patch_embed(images)  # (B, H, W, C)
    i = 0
    for s, stage in enumerate(swin.layers):
        x = stage.downsample(x)
        blocks = range(i, i + len(stage.blocks))
        if blocks[-1] + 1 < config.merge_from:  # h restarts in the next stage before any block adds it
            for block in stage.blocks:
                x = block(x)
            i += len(blocks)
            continue
        h = torch.zeros_like(x)
        for block in stage.blocks:
            if i in taps:
                h = h + _side_map(model, i, x)
            x = block(x)
            if i + 1 >= config.merge_from:
                g = _swish(h, config.beta)
                if config.kernel_size and any(t in taps for t in blocks):
                    g = _depthwise_same(g, model.fusions[str(s)].conv.weight)
                x = x + g
            i += 1
    return model.head(swin.norm(x).mean(dim=(1, 2)))


def _randomise_side(model, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.side_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


def _logits_and_grads(model, forward, x, y) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits = forward(x)
    loss = F.cross_entropy(logits, y)
    return logits.detach(), torch.autograd.grad(loss, model.side_parameters())


CASES = [
    # layout, DTL kwargs: ViT merges from the middle, taps start late; Swin (stages of 2, 2, 18, 2 blocks) has a stage
    # that ends before M (its tap is dead), a stage that is tapped and merged, and the long third stage.
    ("vit", {"rank": 3, "first_tap": 1, "merge_from": 5, "kernel_size": 0}),
    ("vit", {"rank": 3, "first_tap": 1, "merge_from": 5, "kernel_size": 3}),
    ("vit", {"rank": 3, "first_tap": 0, "merge_from": 9, "kernel_size": 4, "beta": 30.0}),
    ("swin", {"rank": 2, "first_tap": 1, "merge_from": 4, "kernel_size": 0}),
    ("swin", {"rank": 2, "first_tap": 1, "merge_from": 4, "kernel_size": 3}),
    ("swin", {"rank": 2, "first_tap": 4, "merge_from": 15, "kernel_size": 4}),
]


@pytest.mark.parametrize(("layout", "kwargs"), CASES, ids=[f"{c[0]}-k{c[1]['kernel_size']}" for c in CASES])
def test_logits_and_gradients_match_the_paper(layout: str, kwargs: dict) -> None:
    model = create_sidenet("dtl", tiny_backbone(layout), num_classes=4, **kwargs).double().train()
    _randomise_side(model)
    x, y = random_batch(model.backbone, batch_size=3, num_classes=4)
    x = x.double()
    reference = reference_vit if layout == "vit" else reference_swin
    got, got_grads = _logits_and_grads(model, model, x, y)
    want, want_grads = _logits_and_grads(model, lambda images: reference(model, images), x, y)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-10), f"logits differ by {(got - want).abs().max():.3g}"
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, got_grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), f"gradient of {name} differs by {(a - b).abs().max():.3g}"
    assert min(float(g.abs().max()) for g in want_grads) > 0, "a side parameter gets no gradient in the reference"
