"""Export contracts: every registered family round-trips through save_pretrained / autoside.load with identical
logits, a fresh Python process reproduces a trained trial's logits and test accuracy, and each kind of bad input
fails with one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import autoside
from autoside.backbones import Backbone, create_backbone
from autoside.errors import AutosideError, ConfigError, WeightsError
from autoside.export.format import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, ExportError, read_side_config
from autoside.export.load import ExportedSideNet, as_batch, read_images
from autoside.export.save import save_pretrained
from autoside.sidenets import SideNet, create_sidenet, list_sidenets

NUM_CLASSES = 5
SEED = 0


def _backbone(name: str = "vit_tiny_patch16_224", seed: int = SEED) -> Backbone:
    """A random-weight backbone built by name (what a recipe with ``weights: random`` builds)."""
    torch.manual_seed(seed)
    return create_backbone(name, weights="random", image_size=32)


def _tiny(layout: str, seed: int = SEED) -> Backbone:
    from autoside.testing import tiny_backbone

    torch.manual_seed(seed)
    return tiny_backbone(layout)


def _build(name: str) -> tuple[SideNet, str]:
    """A family or preset on the first tiny random backbone it accepts, with its side weights moved off their
    initial values (so that loading them is visible in the logits)."""
    errors = []
    for layout in ("vit", "swin", "cnn"):
        try:
            model = create_sidenet(name, _tiny(layout), NUM_CLASSES)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for p in model.side_parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        return model.eval(), layout
    pytest.fail(f"side network {name!r} accepts no tiny backbone: {errors}")


def _images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)


@pytest.fixture(scope="module")
def linear_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SideNet]:
    model = create_sidenet("linear", _backbone(), NUM_CLASSES).eval()
    out = save_pretrained(
        model,
        tmp_path_factory.mktemp("exports") / "linear",
        metrics={"test_accuracy": 0.5, "peak_memory_bytes": 1234, "device": "cpu: test"},
        extra={"classes": list("abcde"), "trial_id": "t0"},
    )
    return out, model


@pytest.mark.parametrize("name", list_sidenets())
def test_roundtrip_every_family(name: str, tmp_path: Path) -> None:
    model, layout = _build(name)
    family = model.config.family
    size = model.backbone.spec.image_size
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    out = save_pretrained(model, tmp_path / name, metrics={"test_accuracy": 0.25})
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
    assert keys == set(model.side_state_dict())
    assert meta["family"] == family
    assert any(k.startswith("backbone.") for k in keys) == (not model.backbone.frozen)
    info = json.loads((out / CONFIG_NAME).read_text())
    assert info["family"] == family and info["config"] == model.config.to_dict()
    assert info["backbone"]["timm_model"] == model.backbone.spec.timm_model
    assert info["backbone"]["data_config"]["input_size"] == [3, size, size]
    assert info["metrics"]["trainable_params"] == model.num_trainable()
    assert {"torch", "timm", "python", "autoside"} <= set(info["versions"])

    loaded = autoside.load(out, backbone=_tiny(layout))
    assert isinstance(loaded, ExportedSideNet) and not loaded.training and not loaded.sidenet.training
    assert type(loaded.sidenet) is type(model) and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    if model.backbone.frozen:
        assert all(not p.requires_grad for p in loaded.backbone.parameters())
        with pytest.raises(WeightsError, match="hashing to"):
            autoside.load(out, backbone=_tiny(layout, seed=SEED + 1))


def test_full_family_needs_no_backbone(tmp_path: Path) -> None:
    """``full`` saves its backbone weights, so even a random-weight backbone loads from the export alone."""
    model = create_sidenet("full", _backbone("resnet10t"), NUM_CLASSES).eval()
    x = torch.randn(2, 3, 32, 32)
    out = save_pretrained(model, tmp_path / "full")
    with torch.no_grad():
        assert torch.equal(autoside.load(out)(x), model(x))


def test_random_backbone_must_be_given(linear_export: tuple[Path, SideNet]) -> None:
    with pytest.raises(WeightsError, match="random weights.*backbone="):
        autoside.load(linear_export[0])


def test_backbone_hash_mismatch(linear_export: tuple[Path, SideNet]) -> None:
    with pytest.raises(WeightsError, match="trained on weights hashing to"):
        autoside.load(linear_export[0], backbone=_backbone("vit_tiny_patch16_224", seed=SEED + 1))


def test_backbone_architecture_mismatch(linear_export: tuple[Path, SideNet]) -> None:
    torch.manual_seed(SEED)
    other = create_backbone("vit_tiny_patch16_224", weights="random", image_size=48)
    with pytest.raises(ConfigError, match="backbone.timm_kwargs|backbone.image_size|backbone.grid_size"):
        autoside.load(linear_export[0], backbone=other)


def test_predict_and_classes(linear_export: tuple[Path, SideNet]) -> None:
    out, model = linear_export
    loaded = autoside.load(out, backbone=_backbone("vit_tiny_patch16_224"))
    images = _images()
    with torch.no_grad():
        expected = model(loaded.preprocess(images)).softmax(-1)
    assert loaded.classes == tuple("abcde")
    assert torch.allclose(loaded.predict(images), expected)
    # Channels-last numpy, floats in [0, 1] and a list of single images are the same batch.
    assert torch.allclose(loaded.predict(images.permute(0, 2, 3, 1).numpy()), expected)
    assert torch.allclose(loaded.predict(images.float() / 255), expected)
    assert torch.allclose(loaded.predict(list(images)), expected)
    top = loaded.topk(images, k=2)
    assert len(top) == 4 and len(top[0]) == 2 and top[0][0][0] in "abcde"
    assert loaded.metrics["test_accuracy"] == 0.5 and loaded.info["extra"]["trial_id"] == "t0"


def test_as_batch_shapes() -> None:
    gray = torch.randint(0, 256, (2, 8, 8), dtype=torch.uint8)
    assert as_batch(gray).shape == (2, 1, 8, 8)
    assert as_batch(gray[:, None]).shape == (2, 1, 8, 8)
    assert as_batch([gray[0], torch.zeros(3, 16, 16, dtype=torch.uint8)]).shape == (2, 3, 8, 8)
    with pytest.raises(AutosideError, match="channels"):
        as_batch(torch.zeros(2, 5, 8, 8))


def test_read_images(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (20, 10), 128).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "b.jpg")
    batch = read_images([tmp_path / "a.png", tmp_path / "b.jpg"], 16)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.uint8
    with pytest.raises(AutosideError, match="is a folder; give image files"):
        read_images([tmp_path], 16)
    with pytest.raises(ExportError, match="is a file; give the export folder"):
        read_side_config(tmp_path / "a.png")
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(AutosideError, match="not a readable image"):
        read_images([tmp_path / "c.png"], 16)


def test_existing_folder_refused_unless_overwrite(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    out, model = linear_export
    target = tmp_path / "again"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        save_pretrained(model, target)
    assert (target / "keep.txt").exists()
    # --force replaces a previous export or an empty folder, never a folder of someone's files or a file.
    with pytest.raises(ExportError, match="not an export; not replaced"):
        save_pretrained(model, target, overwrite=True)
    assert (target / "keep.txt").read_text() == "x"
    (tmp_path / "afile").write_text("y")
    with pytest.raises(ExportError, match="is not a folder"):
        save_pretrained(model, tmp_path / "afile", overwrite=True)
    assert (tmp_path / "afile").read_text() == "y"
    (target / "keep.txt").unlink()
    save_pretrained(model, target, overwrite=True)  # empty folder
    save_pretrained(model, target, overwrite=True)  # previous export
    assert sorted(p.name for p in target.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME, CARD_NAME])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "again"]


def test_failed_export_leaves_nothing(
    linear_export: tuple[Path, SideNet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(linear_export[1], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_classes_must_match(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="classes"):
        save_pretrained(linear_export[1], tmp_path / "out", extra={"classes": ["a"]})


def _copy(out: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(out, tmp_path / "copy"))


def test_truncated_weights(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    copy = _copy(linear_export[0], tmp_path)
    data = (copy / WEIGHTS_NAME).read_bytes()
    (copy / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated, edited"):
        autoside.load(copy, backbone=_backbone("vit_tiny_patch16_224"))
    # Without the recorded hash, safetensors itself refuses the file: still one clear error.
    info = json.loads((copy / CONFIG_NAME).read_text())
    del info["weights_sha256"]
    (copy / CONFIG_NAME).write_text(json.dumps(info))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        autoside.load(copy, backbone=_backbone("vit_tiny_patch16_224"))


def test_edited_weights(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy = _copy(linear_export[0], tmp_path)
    data = bytearray((copy / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (copy / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 differs"):
        autoside.load(copy, backbone=_backbone("vit_tiny_patch16_224"))
    # A re-saved file with a renamed tensor (hash check removed) fails the strict key check.
    state = load_file(str(linear_export[0] / WEIGHTS_NAME))
    state["head.weight_renamed"] = state.pop("head.weight")
    save_file(state, str(copy / WEIGHTS_NAME), metadata={"family": "linear"})
    info = json.loads((copy / CONFIG_NAME).read_text())
    del info["weights_sha256"]
    (copy / CONFIG_NAME).write_text(json.dumps(info))
    with pytest.raises(WeightsError, match="1 missing .*head.weight.*1 unexpected"):
        autoside.load(copy, backbone=_backbone("vit_tiny_patch16_224"))


def test_newer_config_keys_warn_and_drop(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    out, model = linear_export
    copy = _copy(out, tmp_path)
    info = json.loads((copy / CONFIG_NAME).read_text())
    info["config"]["knob_from_the_future"] = 3
    info["backbone"]["another_new_field"] = True
    (copy / CONFIG_NAME).write_text(json.dumps(info))
    with pytest.warns(UserWarning) as record:
        loaded = autoside.load(copy, backbone=_backbone("vit_tiny_patch16_224"))
    messages = " ".join(str(w.message) for w in record)
    assert "knob_from_the_future" in messages and "another_new_field" in messages
    assert loaded.config == model.config


def test_newer_format_refused(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    copy = _copy(linear_export[0], tmp_path)
    info = json.loads((copy / CONFIG_NAME).read_text())
    info["format_version"] = 99
    (copy / CONFIG_NAME).write_text(json.dumps(info))
    with pytest.raises(ExportError, match="newer autoside"):
        autoside.load(copy)


def test_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not found"):
        autoside.load(tmp_path / "missing")
    with pytest.raises(ExportError, match="side_config.json is missing"):
        autoside.load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        autoside.load(tmp_path)


def test_unknown_family(linear_export: tuple[Path, SideNet], tmp_path: Path) -> None:
    copy = _copy(linear_export[0], tmp_path)
    info = json.loads((copy / CONFIG_NAME).read_text())
    info["family"] = info["config"]["family"] = "no_such_family"
    (copy / CONFIG_NAME).write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="unknown family 'no_such_family'"):
        autoside.load(copy)


def test_checkpoint_backbone(tmp_path: Path) -> None:
    """A backbone loaded from a local checkpoint is rebuilt from that file (and refused without it)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    save_file(timm.create_model("resnet10t", num_classes=3).state_dict(), str(tmp_path / "bb.safetensors"))
    backbone = create_backbone("resnet10t", checkpoint=tmp_path / "bb.safetensors", image_size=32)
    model = create_sidenet("linear", backbone, NUM_CLASSES).eval()
    out = save_pretrained(model, tmp_path / "export")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(WeightsError, match="checkpoint=FILE"):
        autoside.load(out)
    with torch.no_grad():
        assert torch.equal(autoside.load(out, checkpoint=tmp_path / "bb.safetensors")(x), model(x))
    torch.manual_seed(SEED + 1)
    save_file(timm.create_model("resnet10t", num_classes=3).state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="hashing to"):
        autoside.load(out, checkpoint=tmp_path / "other.safetensors")


def test_trained_trial_in_fresh_process(tiny_recipe_dict: dict, tmp_path: Path) -> None:
    """Acceptance: export a trained trial, load it in a new interpreter (backbone rebuilt from the spec, offline
    pretrained weights): identical logits on the same inputs and the same test accuracy the trial reported."""
    from autoside.data import Preprocess, load_task
    from autoside.recipe import recipe_from_dict
    from autoside.train import run_trial

    recipe = recipe_from_dict({**tiny_recipe_dict, "epochs": 1, "device": "cpu"})
    task = load_task(recipe.dataset)
    result, model = run_trial(recipe, task=task)
    out = save_pretrained(
        model,
        tmp_path / "export",
        metrics=result.to_dict(),
        extra={"classes": list(task.classes), "recipe": recipe.to_dict()},
    )
    model.eval()
    images = task.test.images[:16]
    with torch.no_grad():
        logits = model(Preprocess.from_data_config(model.backbone.spec.data_config)(images))
    torch.save({"images": images, "logits": logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch, autoside
        from autoside.data import load_task
        from autoside.recipe import recipe_from_dict
        from autoside.train import evaluate
        torch.set_num_threads(1)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = autoside.load({str(out)!r})
        with torch.no_grad():
            logits = model(model.preprocess(expected["images"]))
        assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
        recipe = recipe_from_dict(model.info["extra"]["recipe"])
        task = load_task(recipe.dataset)
        acc = evaluate(model.sidenet, task.test, model.preprocess, batch_size=recipe.eval_batch_size,
                       device=torch.device("cpu"))
        assert acc == model.metrics["test_accuracy"], (acc, model.metrics["test_accuracy"])
        assert model.classes == tuple(task.classes)
        print("OK", acc)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
    assert f"{result.test_accuracy}" in proc.stdout


def test_export_files_follow_the_umask(tmp_path: Path) -> None:
    """A shared export is readable by the team: files get 0666 minus the umask (0644 under the usual 022)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = save_pretrained(create_sidenet("linear", _backbone(), NUM_CLASSES), tmp_path / "shared")
    finally:
        os.umask(old)
    for file in out.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file.name
