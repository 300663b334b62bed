"""A cached trial without its backbone: same training, less memory, and an export that loads onto the real backbone."""

from __future__ import annotations

import pytest
import torch

from autoside.cache import FeatureStore
from autoside.recipe import recipe_from_dict
from autoside.train import build_backbone, load_backbone_weights, run_trial


def _recipe(tmp_path, family: str, weights: str = "pretrained", **changes):  # noqa: ANN001, ANN202
    return recipe_from_dict(
        {
            "name": "tiny_vit",
            "dataset": {"name": "digits", "train_size": 48, "val_size": 16, "test_size": 16, "seed": 0},
            "backbone": {"name": "vit12_fmnist", "weights": weights},
            "sidenet": {"name": family},
            "image_size": 28,
            "epochs": 2,
            "batch_size": 16,
            "lr": 0.01,
            "warmup_epochs": 0.5,
            "threads": 1,
            "cache_dir": str(tmp_path / "cache"),
            "cache_dtype": "float32",
            **changes,
        }
    )


@pytest.mark.parametrize("family", ["linear", "losa", "dtl"])
def test_second_trial_reads_features_and_weights_record_without_loading_the_backbone(tmp_path, family):
    recipe = _recipe(tmp_path, family)
    first, _ = run_trial(recipe, load_backbone=False)
    second, net = run_trial(recipe, load_backbone=False)
    assert first.feature_cache["status"] == "built" and first.feature_cache["backbone_loaded"]
    assert second.feature_cache["status"] == "hit" and not second.feature_cache["backbone_loaded"]
    assert not net.backbone.weights_loaded
    # The side network starts and trains the same on the record's tensors as on the loaded backbone's.
    for a, b in zip(first.history, second.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["val_accuracy"] == b["val_accuracy"]
    assert second.peak_memory_bytes <= first.peak_memory_bytes
    records = [r for r in FeatureStore(recipe.cache_dir).entries() if r["key"].get("record")]
    assert len(records) == 1


def test_export_of_a_trial_without_backbone_loads_onto_the_real_one(tmp_path):
    from autoside.export.load import load
    from autoside.export.save import save_pretrained

    recipe = _recipe(tmp_path, "losa", weights="random")
    run_trial(recipe, load_backbone=False)
    _, net = run_trial(recipe, load_backbone=False)
    assert not net.backbone.weights_loaded
    out = save_pretrained(net, tmp_path / "export")
    loaded = load(out, backbone=build_backbone(recipe))
    load_backbone_weights(net, recipe)
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.sidenet.eval()(x), net.eval()(x))


def test_other_weights_under_the_same_name_are_not_read_from_the_record(tmp_path):
    recipe = _recipe(tmp_path, "linear", weights="random")
    run_trial(recipe, load_backbone=False)
    # Another seed draws other random weights: another identity, so nothing is shared (loaded, built anew).
    other, _ = run_trial(_recipe(tmp_path, "linear", weights="random", seed=1), load_backbone=False)
    assert other.feature_cache["status"] == "built" and other.feature_cache["backbone_loaded"]


def test_a_corrupt_weights_record_is_rebuilt_never_read(tmp_path):
    from autoside.cache import store as store_module

    recipe = _recipe(tmp_path, "losa")
    run_trial(recipe, load_backbone=False)
    store = FeatureStore(recipe.cache_dir)
    [record] = [r for r in store.entries() if r["key"].get("record")]
    path = store.root / f"{record['digest']}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    store_module._VERIFIED.clear()  # checksums are checked once per process: forget that this one was
    # The features are whole, the record is not: the trial loads its backbone and stores the record again.
    again, _ = run_trial(recipe, load_backbone=False)
    assert again.feature_cache["status"] == "hit" and again.feature_cache["backbone_loaded"]
    third, _ = run_trial(recipe, load_backbone=False)
    assert not third.feature_cache["backbone_loaded"]
    for a, b in zip(again.history, third.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
