"""CST: the pruned side network, the gradient path, distillation on real data, an independent forward, export in a
fresh process, a small search end to end, and bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autoside.backbones import create_backbone
from autoside.errors import ConfigError
from autoside.sidenets import create_sidenet
from autoside.sidenets.cst import CSTConfig
from autoside.testing import blocks_recording_graph, random_batch, run_contract, tiny_backbone


def _resnet18():
    torch.manual_seed(0)
    return create_backbone("resnet18", weights="random", image_size=32)


def _predicted_params(widths: dict[str, int], stem_width: int, kept: list[int]) -> int:
    """Parameters of a basic-block ResNet side copy from its stored widths: 3 x 3 convs, 1 x 1 downsample, BN."""
    total, cin = 0, stem_width
    for s, blocks in enumerate(kept):
        for b in range(blocks):
            mid, out = widths[f"stages.{s}.{b}.conv1"], widths[f"stages.{s}.{b}.conv2"]
            total += cin * mid * 9 + 2 * mid + mid * out * 9 + 2 * out
            if f"stages.{s}.{b}.downsample.0" in widths:
                total += cin * out + 2 * out
            cin = out
    return total


@pytest.mark.parametrize(("ratio", "drop"), [(0.5, 0), (0.75, 3), (0.0, 1)])
def test_pruned_side_network_is_consistent(ratio: float, drop: int) -> None:
    model = create_sidenet("cst", _resnet18(), num_classes=3, prune_ratio=ratio, drop_blocks=drop)
    kept = model.config.blocks_kept([2, 2, 2, 2])
    assert kept == {0: [2, 2, 2, 2], 1: [2, 2, 2, 1], 3: [2, 1, 1, 1]}[drop]
    assert [len(stage) for stage in model.side_net.stages] == kept
    side_params = sum(p.numel() for p in model.side_net.parameters())
    assert side_params == _predicted_params(model.config.widths, 64, kept)
    if ratio:
        assert model.config.widths["stages.3.0.conv2"] == round(512 * (1 - ratio))
    run_contract(model)


def test_ratio_zero_reproduces_the_copy_exactly() -> None:
    model = create_sidenet("cst", _resnet18(), num_classes=3, prune_ratio=0.0).eval()
    x, _ = random_batch(model.backbone)
    with torch.no_grad():
        stem = model.backbone.model.maxpool(
            model.backbone.model.act1(model.backbone.model.bn1(model.backbone.model.conv1(x)))
        )
        for side, frozen in zip(model.side_net(stem), model.backbone.intermediates(x, indices=[1, 2, 3, 4])):
            assert torch.equal(side, frozen)
    assert all(isinstance(p, torch.nn.Identity) for p in model.proj.values())


@pytest.mark.parametrize("gate", ["mtc", "spatial"])
def test_forward_matches_a_plain_reimplementation(gate: str) -> None:
    """Head-only calibration, recomputed from timm's forward_intermediates and the gate written out."""
    model = create_sidenet("cst", _resnet18(), num_classes=3, gate=gate, writes_back=False, first_stage=2).eval()
    with torch.no_grad():
        for p in model.side_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x, _ = random_batch(model.backbone)
    with torch.no_grad():
        frozen = model.backbone.intermediates(x, indices=[3, 4])
        side = model.side_net(model.backbone.intermediates(x, indices=[2])[0])  # side copies of stages 2 and 3
        pooled = []
        for i, (b, s) in enumerate(zip(frozen, side), start=2):
            s = model.proj[str(i)](s)
            g = model.gates[str(i)]
            if gate == "mtc":
                logit = g.backbone_weight * b.amax((2, 3)) + g.side_weight * s.amax((2, 3)) + g.bias
                weight = torch.sigmoid(logit)[:, :, None, None]
            else:
                stats = torch.cat([b.mean(1, True), b.amax(1, True), s.mean(1, True), s.amax(1, True)], 1)
                weight = torch.sigmoid(F.conv2d(stats, g.conv.weight, g.conv.bias, padding=3))
            pooled.append(((1 - weight) * b + weight * s).mean((2, 3)))
        expected = model.head(torch.cat(pooled, 1))
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize(("writes_back", "first_stage"), [(True, 1), (True, 0), (False, 1)])
def test_gradient_path(writes_back: bool, first_stage: int) -> None:
    model = create_sidenet("cst", _resnet18(), num_classes=3, writes_back=writes_back, first_stage=first_stage)
    x, y = random_batch(model.backbone)
    recorded = blocks_recording_graph(model, x, blocks=model._stages)
    # With writes_back only the stages after the first calibrated one see the side network; without, none does.
    assert recorded == [writes_back and i > first_stage for i in range(4)]
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.side_parameters())


def test_distillation_loss_decreases_on_real_data() -> None:
    from autoside.data import DatasetConfig, Preprocess, load_task
    from autoside.train import training_step

    torch.manual_seed(0)
    task = load_task(DatasetConfig(name="animal_mnist", train_size=32, val_size=8, test_size=8))
    backbone = create_backbone("resnet4s_fmnist")
    model = create_sidenet(
        "cst", backbone, num_classes=10, prune_ratio=0.5, lambda_feat=1.0, lambda_kd=1.0, distill_epochs=1
    )
    x = Preprocess.from_data_config(backbone.spec.data_config)(task.train.images)
    optimizer = torch.optim.AdamW(model.side_parameters(), lr=3e-3)
    model.train()
    model.begin_epoch(0)  # the distil-only warm-up: the task loss is left out
    losses = [training_step(model, x, task.train.labels, optimizer, amp=False, label_smoothing=0.0) for _ in range(8)]
    assert losses[-1] < 0.6 * losses[0], losses
    assert model.head.weight.grad is not None  # the KD term reaches the head through the student's logits
    model.begin_epoch(1)
    model(x)
    with_task = model.training_loss(torch.tensor(5.0))
    assert with_task.item() > 5.0  # after the warm-up, task loss + distillation


def test_efficientnet_lite0() -> None:
    backbone = create_backbone("tf_efficientnet_lite0", image_size=32)
    model = create_sidenet("cst", backbone, num_classes=3, first_stage=5, prune_ratio=0.5, drop_blocks=3)
    assert [len(s) for s in model.side_net.stages] == [1, 1]  # copies of stages 5 and 6 (4 and 1 blocks), 3 dropped
    run_contract(model)


@pytest.mark.parametrize(
    ("options", "layout", "field"),
    [
        ({"prune_ratio": 1.0}, "cnn", "prune_ratio"),
        ({"prune_ratio": -0.1}, "cnn", "prune_ratio"),
        ({"stage_prune_ratios": [0.5, 1.5, 0.0, 0.0]}, "cnn", r"stage_prune_ratios\[1\]"),
        ({"stage_prune_ratios": [0.5, 0.5]}, "cnn", "stage_prune_ratios"),
        ({"first_stage": 4}, "cnn", "first_stage"),
        ({"distill_epochs": -1}, "cnn", "distill_epochs"),
        ({"widths": {"stages.0.0.conv1": 3}}, "cnn", "widths"),
        ({}, "vit", "family"),
        ({}, "swin", "family"),
    ],
)
def test_bad_input(options: dict, layout: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^sidenet\.{field}: "):
        create_sidenet("cst", tiny_backbone(layout), num_classes=3, **options)


def test_config_fields_are_typed() -> None:
    with pytest.raises(ConfigError, match=r"^sidenet\.gate: "):
        CSTConfig.from_dict({"gate": "max"})


def test_export_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """A trained CST trial: the fresh process rebuilds the pruned network from side_config.json's widths."""
    from autoside.data import Preprocess
    from autoside.export.save import save_pretrained
    from autoside.recipe import recipe_from_dict
    from autoside.train import run_trial

    recipe = recipe_from_dict(
        {
            "name": "cst",
            "dataset": {"name": "digits", "train_size": 64, "val_size": 16, "test_size": 16},
            "backbone": {"name": "resnet4s_fmnist"},
            "sidenet": {"name": "cst_resnet4s_fmnist", "options": {"importance": "taylor", "lambda_feat": 1.0}},
            "image_size": 28,
            "epochs": 2,
            "batch_size": 16,
            "lr": 0.003,
            "warmup_epochs": 0,
            "device": "cpu",
            "threads": 1,
        }
    )
    result, model = run_trial(recipe)
    assert [h["epoch"] for h in result.history] == [1, 2]
    out = save_pretrained(model, tmp_path / "export", metrics=result.to_dict())
    images = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        logits = model(Preprocess.from_data_config(model.backbone.spec.data_config)(images))
    torch.save({"images": images, "logits": logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch, autoside
        torch.set_num_threads(1)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = autoside.load({str(out)!r})
        assert "torch_pruning" not in sys.modules or model.config.widths
        with torch.no_grad():
            logits = model(model.preprocess(expected["images"]))
        assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")


@pytest.mark.ray
@pytest.mark.slow
def test_cst_search_end_to_end(tmp_path: Path, ray_cluster: None) -> None:
    """Four CST trials through Ray, Optuna and MLflow on CPU; the knee trial exports and loads back."""
    import autoside
    from autoside.export.pick import export_trial

    space = {
        "name": "cst_tiny",
        "families": {
            "cst": {
                "prune_ratio": {"type": "float", "low": 0.0, "high": 0.75, "step": 0.25},
                "gate": {"type": "categorical", "choices": ["mtc", "channel"]},
                "writes_back": {"type": "categorical", "choices": [True, False]},
                "lambda_feat": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
                "drop_blocks": {"type": "int", "low": 0, "high": 2},
            }
        },
    }
    recipe = {
        "name": "digits_resnet4s",
        "dataset": {"name": "digits", "train_size": 96, "val_size": 32, "test_size": 32},
        "backbone": {"name": "resnet4s_fmnist"},
        "image_size": 28,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.003,
        "warmup_epochs": 0,
        "device": "cpu",
        "threads": 1,
    }
    result = autoside.search(
        space, recipe, num_samples=4, max_concurrent=2, seed=0, root=str(tmp_path / "runs"), name="cst"
    )
    assert len(result.trials) == 4 and {r.status for r in result.trials} == {"ok"}, [r.status for r in result.trials]
    assert all(r.config["family"] == "cst" for r in result.trials)
    out, record = export_trial("cst", tmp_path / "export", knee=True, root=str(tmp_path / "runs"))
    loaded = autoside.load(out)
    assert loaded.config.widths and loaded.config.unresolved().to_dict() == record.config


def test_memory_prediction_covers_distillation() -> None:
    """The dry steps that predict a trial's memory take the same loss (distillation included) as training."""
    from autoside.data import load_task
    from autoside.memory.predict import predict_peak_memory
    from autoside.recipe import recipe_from_dict
    from autoside.train import build_model, train_model

    recipe = recipe_from_dict(
        {
            "name": "cst_memory",
            "dataset": {"name": "digits", "train_size": 64, "val_size": 16, "test_size": 16},
            "backbone": {"name": "resnet4s_fmnist"},
            "sidenet": {"name": "cst_resnet4s_fmnist", "options": {"lambda_kd": 1.0, "distill_epochs": 1}},
            "image_size": 28,
            "epochs": 2,
            "batch_size": 32,
            "warmup_epochs": 0,
            "device": "cpu",
        }
    )
    task = load_task(recipe.dataset)
    model = build_model(recipe, task.num_classes)
    prediction = predict_peak_memory(model, task, recipe)
    measured = train_model(model, task, recipe, device=torch.device("cpu")).peak_memory_bytes
    error = prediction.predicted_bytes / measured - 1
    assert abs(error) <= 0.10, f"prediction {prediction.predicted_bytes} vs measured {measured}: {error:+.1%}"


def test_unsupported_cnn_is_refused() -> None:
    from autoside.testing import timm_backbone

    with pytest.raises(ConfigError, match=r"^sidenet\.family: 'cst' needs a timm ResNet or EfficientNet"):
        create_sidenet("cst", timm_backbone("convnext_atto", {}, 32), num_classes=3)
