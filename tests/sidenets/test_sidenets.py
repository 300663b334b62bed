"""Contract tests over every registered family and preset, on tiny random backbones of each layout."""

from __future__ import annotations

import pytest
import torch

from autoside.errors import ConfigError
from autoside.sidenets import create_sidenet, list_sidenets, resolve
from autoside.testing import run_contract, tiny_backbone

LAYOUTS = ("vit", "swin", "cnn")
NAMES = list_sidenets()


def _build(name: str, layout: str):
    backbone = tiny_backbone(layout)
    torch.manual_seed(0)
    return create_sidenet(name, backbone, num_classes=3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, layout: str) -> None:
    if _refused(name, layout):
        # Not a skip: refusing a backbone the method cannot work on, with a field-named error, is the contract.
        with pytest.raises(ConfigError, match=r"^sidenet\.(family|merge_from): "):
            _build(name, layout)
        return
    run_contract(_build(name, layout))


def _refused(name: str, layout: str) -> bool:
    """LoSA (image and video) and Side4Video need a ViT, DTL a ViT or Swin, CST a CNN; the Swin-B preset merges from
    block 15, past a 12-block ViT."""
    family = resolve(name).family
    return (
        (family in ("losa", "losa_video", "side4video") and layout != "vit")
        or (family == "cst" and layout != "cnn")
        or (family == "dtl" and layout == "cnn")
        or (name == "dtl_swin_b" and layout == "vit")
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_name_builds_somewhere(name: str) -> None:
    accepted = []
    for layout in LAYOUTS:
        try:
            _build(name, layout)
            accepted.append(layout)
        except ConfigError as exc:
            assert str(exc).startswith("sidenet."), f"{name} on {layout}: error does not name the field: {exc}"
    assert accepted, f"{name} builds on none of {LAYOUTS}"


@pytest.mark.parametrize("name", NAMES)
def test_config_resolves_and_round_trips(name: str) -> None:
    config = resolve(name)
    assert type(config).from_dict(config.to_dict()) == config


CHECKPOINTING = [
    ("side4video", "vit"),
    ("dtl", "vit"),
    ("dtl", "swin"),
    ("cst", "cnn"),
    ("full", "vit"),
    ("full", "swin"),
]


def _step(name: str, layout: str, checkpointing: bool) -> tuple[torch.nn.Module, torch.Tensor, int, int]:
    """One measured training forward and backward; the model, its loss, and the tracked peak and saved bytes."""
    from autoside.memory.meter import MemoryMeter
    from autoside.testing import random_batch

    torch.manual_seed(0)  # the tiny backbone's random weights too
    model = _build(name, layout).train()
    model.set_grad_checkpointing(checkpointing)
    x, y = random_batch(model.backbone, frames=4 if model.modality == "video" else None)
    torch.manual_seed(1)  # stochastic depth and dropout draw the same in both runs
    with MemoryMeter("cpu") as meter:
        meter.register_model(model)
        meter.register(x, y)
        meter.step()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
    report = meter.report()
    return model, loss.detach(), report.tracked_peak_bytes, report.saved_activation_bytes


@pytest.mark.parametrize(("name", "layout"), CHECKPOINTING)
def test_grad_checkpointing_keeps_the_result_and_keeps_fewer_activations(name: str, layout: str) -> None:
    plain, loss, peak, saved = _step(name, layout, False)
    ckpt, ckpt_loss, ckpt_peak, ckpt_saved = _step(name, layout, True)
    torch.testing.assert_close(ckpt_loss, loss, rtol=0, atol=0)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads and grads.keys() == {n: p for n, p in ckpt.named_parameters() if p.grad is not None}.keys()
    for n, p in ckpt.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)
    # Norms with running statistics run once per step, outside what is recomputed.
    for (n, b), (_, cb) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(cb, b, rtol=0, atol=0, msg=n)
    assert ckpt_saved < 0.9 * saved, f"{name}: saved activations {ckpt_saved} with checkpointing vs {saved}"
    assert ckpt_peak <= peak  # lower where the recomputed activations set the peak (the trial test checks DTL)


def test_a_family_without_blocks_to_recompute_refuses_checkpointing_by_name() -> None:
    model = _build("linear", "vit")
    with pytest.raises(ConfigError, match=r"^grad_checkpointing: 'linear' has no blocks to recompute"):
        model.set_grad_checkpointing()
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing
    # Recomputing a block with BatchNorm in training would count each batch twice in its running statistics.
    with pytest.raises(ConfigError, match=r"^grad_checkpointing: backbone 'tiny_cnn' has BatchNorm layers"):
        _build("full", "cnn").set_grad_checkpointing()
