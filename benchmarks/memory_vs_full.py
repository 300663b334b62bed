"""Peak training memory of every side-network family against full fine-tuning, on one backbone, batch and input.

Each row trains its side network for ``--steps`` real steps (AdamW, ``zero_grad(set_to_none=True)``, forward,
backward, optimizer step) under :class:`autoside.memory.MemoryMeter` and reports what the meter measured: the peak of
live tensor bytes (parameters, gradients, optimizer state, tensors saved for backward, transients) on any device, and
on CUDA also the allocator peak. Ratios are to the ``full`` row measured in the same run. Families that do not apply
to the backbone (e.g. DTL on a CNN) are listed with the reason and skipped.

    python benchmarks/memory_vs_full.py                       # vit_base_patch16_224, 224 px, batch 32
    python benchmarks/memory_vs_full.py --backbone vit12_fmnist --image-size 28 --batch-size 64 --markdown out.md
    python benchmarks/memory_vs_full.py --backbone resnet50 --only linear cst "cst (head only)" cst_resnet50
    python benchmarks/memory_vs_full.py --frames 8 --batch-size 4   # video: clips of 8 frames, video families

With ``--detection`` every row is a Faster R-CNN with a feature pyramid over the side network's stage maps
(:class:`autoside.detection.model.Detector`), trained on its summed RPN and box losses against three boxes per image;
``full`` fine-tunes the backbone inside the same detector, ``linear`` is the detector on the frozen backbone with no
side network. Families without stage maps are skipped.

    python benchmarks/memory_vs_full.py --detection --backbone resnet4s_fmnist --image-size 128 --batch-size 16

With ``--frames T`` the inputs are clips ``(B, T, 3, S, S)`` and the rows are the video families at their defaults
(Side4Video's are the paper's ViT-B/16 setting: s = 320, every layer, temporal conv, CLS shift) against full
fine-tuning of the same backbone applied frame by frame, its logits averaged over time (TSN-style), plus three
smaller Side4Video designs of the kind ``search_spaces/video.yaml`` searches (narrower, fewer layers).

Rows marked "grad checkpointing" train the same network with the recipe's ``grad_checkpointing: true`` (the side
network's blocks, or for ``full`` timm's backbone blocks, recompute their activations in backward).
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Rows besides the registered families at their defaults: DTL+ is DTL with a depthwise fusion kernel.
# CST (default: every stage calibrated and written back) also runs head-only and as its ResNet-50 preset.
EXTRA_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("dtl+ (k=3)", "dtl", {"kernel_size": 3}),
    ("cst (head only)", "cst", {"writes_back": False}),
    ("cst_resnet50", "cst_resnet50", {}),
    ("cst_det_resnet4s_fmnist", "cst_det_resnet4s_fmnist", {}),
    ("cst_det_resnet4s_fmnist (3/4 pruned)", "cst_det_resnet4s_fmnist", {"prune_ratio": 0.75}),
    ("dtl (grad checkpointing)", "dtl", {"grad_checkpointing": True}),
    ("cst (grad checkpointing)", "cst", {"grad_checkpointing": True}),
    ("full (grad checkpointing)", "full", {"grad_checkpointing": True}),
]
VIDEO_EXTRA_ROWS: list[tuple[str, str, dict[str, Any]]] = [  # smaller Side4Video designs the video space can pick
    ("side4video (s=128)", "side4video", {"side_width": 128}),
    ("side4video (top_half)", "side4video", {"layer_set": "top_half"}),
    ("side4video (s=128, every_other)", "side4video", {"side_width": 128, "layer_set": "every_other"}),
    # The paper's setting with the authors' own switch: temporal conv, attention and MLP recomputed in backward.
    ("side4video (grad checkpointing)", "side4video", {"grad_checkpointing": True}),
    ("full (grad checkpointing)", "full", {"grad_checkpointing": True}),
]


class FrameWise(nn.Module):
    """An image side network (here: full fine-tuning) on clips: every frame through it, logits averaged over time."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        return self.net(clips.flatten(0, 1)).view(b, t, -1).mean(1)

    def training_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.net.training_loss(loss)

    def num_trainable(self, **kwargs: Any) -> int:
        return self.net.num_trainable(**kwargs)


@dataclass
class Row:
    label: str
    trainable: int | None = None
    peak: int | None = None
    saved: int | None = None
    cuda_peak: int | None = None
    step_s: float | None = None
    note: str = ""


def measure(label: str, name: str, options: dict[str, Any], args: argparse.Namespace, device: torch.device) -> Row:
    from autoside.backbones import create_backbone
    from autoside.errors import ConfigError
    from autoside.memory.meter import MemoryMeter
    from autoside.sidenets import create_sidenet
    from autoside.train import param_groups

    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, weights=args.weights, image_size=args.image_size)
    options = dict(options)
    checkpointing = options.pop("grad_checkpointing", False)
    try:
        model = create_sidenet(name, backbone, num_classes=args.num_classes, **options)
        model.set_grad_checkpointing(checkpointing)
    except ConfigError as exc:
        return Row(label, note=f"skipped: {exc}")
    if args.frames and model.modality != "video":
        model = FrameWise(model)
    if args.detection:
        from autoside.detection.config import DetectorConfig
        from autoside.detection.model import Detector

        try:
            model = Detector(model, args.num_classes, DetectorConfig(fpn_channels=args.fpn_channels))
        except ConfigError as exc:
            return Row(label, note=f"skipped: {exc}")
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    size = backbone.spec.image_size
    shape = (args.batch_size, args.frames, 3, size, size) if args.frames else (args.batch_size, 3, size, size)
    images = torch.randn(*shape, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    corners = torch.tensor([[0.1, 0.1, 0.4, 0.45], [0.5, 0.2, 0.9, 0.6], [0.2, 0.55, 0.6, 0.95]], device=device)
    targets = [
        {"boxes": corners * size, "labels": torch.arange(3, device=device) % args.num_classes}
        for _ in range(args.batch_size)
    ]
    amp = args.amp and device.type == "cuda"
    times = []
    with MemoryMeter(device) as meter:
        meter.register_model(model)
        meter.register(images, labels)
        for _ in range(args.steps):
            tic = time.perf_counter()
            meter.step()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if args.detection:
                    loss = model.training_loss(sum(v.float() for v in model(images, targets).values()))
                else:
                    loss = model.training_loss(F.cross_entropy(model(images).float(), labels))  # + CST distillation
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - tic)
    report = meter.report()
    row = Row(
        label,
        trainable=model.num_trainable(include_head=False),
        peak=report.tracked_peak_bytes,
        saved=report.saved_activation_bytes,
        cuda_peak=report.cuda_peak_bytes,
        step_s=min(times),
    )
    del model, optimizer, backbone, images, labels
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def rows_to_plan(video: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    from autoside.sidenets import get_family, list_families, list_sidenets

    families, names = list_families(), list_sidenets()
    if video:
        families = [f for f in families if get_family(f).modality == "video"]
    plan = [("full", "full", {})] + [(f, f, {}) for f in families if f != "full"]
    return plan + (VIDEO_EXTRA_ROWS if video else [row for row in EXTRA_ROWS if row[1] in names])


def render(rows: list[Row], args: argparse.Namespace, device_name: str) -> tuple[Any, str]:
    from rich.table import Table

    from autoside.units import format_bytes

    full = next((r for r in rows if r.label == "full" and r.peak), None)
    cuda = any(r.cuda_peak for r in rows)
    headers = ["side network", "trainable (no head)", "peak (live tensors)", "x full", "saved activations"]
    headers += ["CUDA allocator peak", "x full"] if cuda else []
    headers += ["s / step", "note"]
    clips = f" clips of {args.frames} frames (full: frame by frame)" if args.frames else ""
    clips += f", Faster R-CNN + FPN ({args.fpn_channels} channels)" if args.detection else ""
    title = (
        f"{args.backbone} ({args.weights} weights), {args.image_size} px, batch {args.batch_size}{clips}, "
        f"{'bf16 autocast' if args.amp and cuda else 'fp32'}, {device_name}"
    )
    table = Table(title=f"Training memory vs full fine-tuning: {title}")
    for h in headers:
        table.add_column(h, justify="left" if h in ("side network", "note") else "right")
    lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        if r.peak is None:
            cells = [r.label] + ["-"] * (len(headers) - 2) + [r.note]
        else:
            cells = [
                r.label,
                f"{r.trainable:,}",
                format_bytes(r.peak),
                f"{r.peak / full.peak:.3f}" if full else "-",
                format_bytes(r.saved),
            ]
            if cuda:
                cells += [format_bytes(r.cuda_peak), f"{r.cuda_peak / full.cuda_peak:.3f}" if full else "-"]
            cells += [f"{r.step_s:.2f}", r.note]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    return table, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument(
        "--weights",
        default="random",
        choices=["random", "pretrained"],
        help="memory does not depend on the weights; random needs no download",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--frames", type=int, default=0, help="clips of this many frames: the video rows (0: images)")
    parser.add_argument("--detection", action="store_true", help="every row inside a Faster R-CNN with an FPN")
    parser.add_argument("--fpn-channels", type=int, default=64, help="--detection: width of the feature pyramid")
    parser.add_argument("--steps", type=int, default=2, help="training steps per row (the peak covers all of them)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (fp32 otherwise)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all; full always runs)")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)

    from rich.console import Console

    from autoside.memory.meter import _cpu_name
    from autoside.train import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    console = Console(width=None if Console().is_terminal else 160)
    rows = []
    for label, name, options in rows_to_plan(video=args.frames > 0):
        if args.frames and name != "full":  # every video row reads all T frames of the clips
            options = {**options, "frames": args.frames}
        if args.only and label != "full" and label not in args.only:
            continue
        console.print(f"measuring {label} ...")
        rows.append(measure(label, name, options, args, device))
    table, markdown = render(rows, args, device_name)
    console.print(table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown)


if __name__ == "__main__":
    main()
