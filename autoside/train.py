"""One trial: train a side network on a recipe and measure what it cost.

The whole loop is in :func:`train_model` so it can be read top to bottom; :func:`run_trial` builds what it needs
from a recipe. The schedule is a pure function of the step. Weight decay applies to matrices only (not to biases,
norms or 1-d gates). The memory meter wraps the entire training loop, so its peak covers every step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from autoside.backbones import Backbone
from autoside.data import Preprocess, Split, Task, load_task
from autoside.data.transforms import RandomResizedCropFlip
from autoside.errors import ConfigError, WeightsError
from autoside.memory.meter import MemoryMeter
from autoside.objective import Classification, Objective, objective_for
from autoside.recipe import Recipe
from autoside.sidenets import SideConfig, SideNet, create_sidenet, resolve

if TYPE_CHECKING:
    from autoside.cache import CacheInfo

log = logging.getLogger("autoside.train")


@dataclass(frozen=True)
class TrialResult:
    """Everything a trial reports: accuracy, measured memory and cost, and where it was measured.

    ``val_accuracy``/``test_accuracy`` hold the score the search maximises, named by ``metric``: top-1
    (``top1``) for classification, COCO mAP@[.5:.95] (``map``) for detection, which also reports mAP@0.5."""

    val_accuracy: float
    test_accuracy: float
    peak_memory_bytes: int
    memory_source: str
    tracked_peak_bytes: int
    saved_activation_bytes: int
    trainable_params: int
    train_images_per_s: float
    wall_time_s: float
    epochs: int
    batch_size: int
    image_size: int
    device: str
    torch_version: str
    family: str
    history: list[dict[str, float]] = field(default_factory=list)
    memory_tracked_steps: int = 0
    steps: int = 0
    feature_cache: dict[str, Any] = field(default_factory=dict)
    grad_checkpointing: bool = False  # whether this trial recomputed activations (the recipe asked, the family offers)
    task: str = "classification"
    metric: str = "top1"
    val_map_50: float | None = None
    test_map_50: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, *, total: int, warmup: int, base_lr: float, min_ratio: float) -> float:
    """Linear warmup then cosine decay to ``min_ratio * base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device this machine lacks is a clear error, not a driver
    traceback in the middle of a run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device: {name!r} asked for, but this machine has no usable CUDA device; use cpu or auto"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device: {name!r} asked for, but this machine has {count} CUDA device(s)")
    return device


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups; a model may set its own (a detector: the side network at its own learning-rate scale), each
    group's ``lr_scale`` multiplying the schedule's rate."""
    if hasattr(model, "param_groups"):
        return model.param_groups(weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def evaluate(
    model: SideNet, split: Split, preprocess: Preprocess, *, batch_size: int, device: torch.device, amp: bool = False
) -> float:
    """Top-1 accuracy with the model in eval mode (restored afterwards)."""
    return Classification().evaluate(model, split, preprocess, batch_size=batch_size, device=device, amp=amp)[
        "accuracy"
    ]


def training_step(
    model: SideNet,
    x: torch.Tensor,
    targets: Any,
    optimizer: torch.optim.Optimizer,
    *,
    amp: bool,
    label_smoothing: float = 0.0,
    objective: Objective | None = None,
) -> float:
    """One optimisation step (the same one the memory predictor's dry steps take); returns the loss. ``targets``
    are on the device already (labels, or per-image box dicts for detection)."""
    objective = objective or Classification(label_smoothing)
    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model.training_loss(objective.loss(model, x, targets))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


Reporter = Callable[[int, dict[str, float]], None]


def train_model(
    model: SideNet,
    task: Task,
    recipe: Recipe,
    *,
    device: torch.device,
    report: Reporter | None = None,
    progress: bool = False,
    meter: MemoryMeter | None = None,
    preprocess: torch.nn.Module | None = None,
) -> TrialResult:
    """Train ``model`` on ``task.train`` under ``recipe``; ``report(epoch, metrics)`` is called after each epoch
    (a search uses it for early stopping and tracking, and may raise to stop the trial). ``preprocess`` maps a
    split's batches to model inputs (default: images to the backbone's input; stored features for a cached run)."""
    check_task(model, task, recipe)
    objective = objective_for(recipe)
    torch.manual_seed(recipe.seed)
    model.to(device)
    preprocess = preprocess or Preprocess.from_data_config(model.backbone.spec.data_config).to(device)
    amp = recipe.amp and device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(task.train) / recipe.batch_size)
    total, warmup = recipe.epochs * steps_per_epoch, int(recipe.warmup_epochs * steps_per_epoch)
    augment = RandomResizedCropFlip() if recipe.augment else torch.nn.Identity()
    meter = meter or MemoryMeter(device, budget_bytes=recipe.budget_bytes, tracking=recipe.memory_tracking)
    order_gen = torch.Generator().manual_seed(recipe.seed)
    history: list[dict[str, float]] = []
    seen, train_time, step = 0, 0.0, 0
    start_wall = time.perf_counter()
    bar = _progress(progress, total, model.config.family)
    model.train()
    with meter:
        meter.register_model(model)
        for epoch in range(recipe.epochs):
            model.begin_epoch(epoch)
            phase = model.training_phase()  # the meter watches the first steps of each new phase
            order = torch.randperm(len(task.train), generator=order_gen)
            epoch_loss, tic = 0.0, time.perf_counter()
            for images, labels in task.train.batches(recipe.batch_size, order):
                lr = lr_at(step, total=total, warmup=warmup, base_lr=recipe.lr, min_ratio=recipe.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                inputs = (order, images, labels)  # alive across steps: what a sampled meter registers
                with meter.train_step(
                    (len(labels),), epoch=epoch, model=model, optimizer=optimizer, inputs=inputs, phase=phase
                ):
                    x = preprocess(images)
                    loss = training_step(
                        model, augment(x), objective.targets_to(labels, device), optimizer, amp=amp, objective=objective
                    )
                    del x  # freed within the step, so a tracked and an untracked step leave the same behind
                epoch_loss += loss
                seen += len(labels)
                step += 1
                if bar:
                    bar[0].update(bar[1], advance=1, description=f"{model.config.family} epoch {epoch + 1}")
            train_time += time.perf_counter() - tic
            # Evaluation runs outside the meter's budget check: it is not part of training memory.
            with meter.paused():
                val = objective.evaluate(
                    model, task.val, preprocess, batch_size=recipe.eval_batch_size, device=device, amp=amp
                )
            metrics = {
                "epoch": epoch + 1,
                "train_loss": epoch_loss / steps_per_epoch,
                "val_accuracy": val["accuracy"],
                **({"val_map_50": val["map_50"]} if "map_50" in val else {}),
                "lr": lr,
                "peak_memory_bytes": meter.tracker.peak_bytes,
            }
            history.append(metrics)
            if report is not None:
                report(epoch + 1, metrics)
    if bar:
        bar[0].stop()
    memory = meter.report()
    test = objective.evaluate(model, task.test, preprocess, batch_size=recipe.eval_batch_size, device=device, amp=amp)
    return TrialResult(
        val_accuracy=history[-1]["val_accuracy"],
        test_accuracy=test["accuracy"],
        peak_memory_bytes=memory.peak_memory_bytes,
        memory_source=memory.source,
        tracked_peak_bytes=memory.tracked_peak_bytes,
        saved_activation_bytes=memory.saved_activation_bytes,
        trainable_params=model.num_trainable(),
        train_images_per_s=seen / max(train_time, 1e-9),
        wall_time_s=time.perf_counter() - start_wall,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        image_size=model.backbone.spec.image_size,
        device=memory.device,
        torch_version=torch.__version__,
        family=model.config.family,
        history=history,
        memory_tracked_steps=memory.tracked_steps,
        steps=memory.steps,
        task=objective.kind,
        metric=objective.metric,
        val_map_50=history[-1].get("val_map_50"),
        test_map_50=test.get("map_50"),
    )


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    )
    bar.start()
    return bar, bar.add_task(label, total=total)


def check_task(model: SideNet, task: Task, recipe: Recipe | None = None) -> None:
    """Clips need a side network that reads clips (a video family sees a still image as a one-frame clip); boxes
    need a detector, and no augmentation that would move the image under its boxes."""
    detector = getattr(model, "task", "classification") == "detection"
    if (getattr(task, "kind", "classification") == "detection") != detector:
        raise ConfigError(
            f"dataset.name: {task.name!r} is a {getattr(task, 'kind', 'classification')} dataset but the model is "
            f"{'a detector' if detector else 'a classifier'}"
        )
    if detector and recipe is not None and recipe.augment:
        raise ConfigError("augment: random crops and flips would move the images under their boxes; use false")
    if task.modality == "video" and model.modality != "video":
        raise ConfigError(
            f"sidenet.family: {model.config.family!r} reads images but dataset {task.name!r} holds clips; "
            "use a video family (side4video, losa_video)"
        )


def build_model(recipe: Recipe, num_classes: int, config: SideConfig | None = None) -> SideNet:
    """The recipe's backbone and the side network ``config`` (default: the recipe's ``sidenet``), inside what the
    recipe's objective trains (a detector for a detection dataset). The side network is seeded on its own, so it
    starts the same whether or not the backbone was loaded (see :func:`prepare_trial`)."""
    config = config or resolve(recipe.sidenet.name, **recipe.sidenet.options)
    backbone = build_backbone(recipe)
    torch.manual_seed(recipe.seed)
    return objective_for(recipe).build(create_sidenet(config, backbone, num_classes), num_classes)


def build_backbone(recipe: Recipe) -> Backbone:
    """The frozen backbone a recipe names, at the recipe's image size; random weights are drawn from the recipe's
    seed, which names them in the feature cache."""
    from autoside.backbones import create_backbone
    from autoside.cache.backbone import weights_identity

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        backbone = create_backbone(
            recipe.backbone.name,
            weights=recipe.backbone.weights,
            checkpoint=recipe.backbone.checkpoint,
            image_size=recipe.image_size,
            download=recipe.backbone.download,
        )
    backbone.weights_id = weights_identity(backbone.spec, seed=recipe.seed)
    return backbone


@dataclass
class PreparedTrial:
    """What :func:`prepare_trial` built: ``net`` (what is exported) and what trains (``model`` on ``task``)."""

    net: SideNet
    model: torch.nn.Module
    task: Task
    preprocess: torch.nn.Module | None
    cache: CacheInfo


def prepare_trial(
    recipe: Recipe, task: Task, config: SideConfig | None = None, *, device: torch.device
) -> PreparedTrial:
    """The side network ``config`` (default: the recipe's) and what to train: on stored backbone features where that
    is exact (:mod:`autoside.cache`), and then, once its node holds them and the backbone's weights record, without
    loading the backbone at all; else on images, with the backbone loaded."""
    from autoside.cache import BackboneNeeded, side_net_on_record, use_cache

    tic = time.perf_counter()
    config = config or resolve(recipe.sidenet.name, **recipe.sidenet.options)
    net, why = side_net_on_record(recipe, task, config, device=device)
    if net is not None:
        try:
            model, inputs, preprocess, info = use_cache(net, task, recipe, device=device)
        except BackboneNeeded as exc:  # entries removed since they were checked
            net, why = None, str(exc)
    if net is None:
        log.info("%s loads its backbone: %s", config.family, why)
        net = build_model(recipe, task.num_classes, config)
        model, inputs, preprocess, info = use_cache(net, task, recipe, device=device)
    apply_grad_checkpointing(net, recipe)
    info.backbone_loaded = net.backbone.weights_loaded
    info.setup_seconds = time.perf_counter() - tic
    return PreparedTrial(net, model, inputs, preprocess, info)


def apply_grad_checkpointing(net: SideNet, recipe: Recipe) -> None:
    """The recipe's ``grad_checkpointing`` on a family that offers it; the others train as they are (a search may
    mix both), which the log says."""
    if not recipe.grad_checkpointing:
        return
    if net.supports_grad_checkpointing:
        net.set_grad_checkpointing(True)
    else:
        log.info("grad_checkpointing: %s has no blocks to recompute; it trains without", net.config.family)


def load_backbone_weights(net: SideNet, recipe: Recipe) -> None:
    """Load the recipe's backbone weights into a side network built without them, in place (blocks a family changed,
    e.g. DTL's stochastic depth, stay as they are); they must hash as recorded."""
    from autoside.export.format import backbone_state_sha256

    loaded = build_backbone(recipe)
    if net.backbone.state_sha256 is not None and backbone_state_sha256(loaded) != net.backbone.state_sha256:
        raise WeightsError(
            f"backbone {recipe.backbone.name!r}: its weights hash otherwise than the feature cache's record "
            f"({net.backbone.state_sha256[:12]}...); the weights changed since: clear the cache (autoside cache rm)"
        )
    net.backbone.model.load_state_dict(loaded.model.state_dict(), assign=True)
    net.backbone.freeze()


def run_trial(
    recipe: Recipe,
    config: SideConfig | None = None,
    *,
    task: Task | None = None,
    report: Reporter | None = None,
    progress: bool = False,
    load_backbone: bool = True,
) -> tuple[TrialResult, SideNet]:
    """Build and train one side network from a recipe (on cached backbone features where that is exact); returns
    the result and the trained model, on its loaded backbone unless ``load_backbone`` is False (then a cached trial's
    backbone may be its architecture only: enough to export it, not to run it)."""

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = resolve_device(recipe.device)
    task = task or load_task(recipe.dataset, image_size=recipe.image_size)
    prepared = prepare_trial(recipe, task, config, device=device)
    result = train_model(
        prepared.model,
        prepared.task,
        recipe,
        device=device,
        report=report,
        progress=progress,
        preprocess=prepared.preprocess,
    )
    if load_backbone and not prepared.net.backbone.weights_loaded:
        load_backbone_weights(prepared.net, recipe)
    checkpointing = prepared.net.grad_checkpointing
    return replace(result, feature_cache=asdict(prepared.cache), grad_checkpointing=checkpointing), prepared.net
