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
