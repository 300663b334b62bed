"""``autoside pretrain``: retrain a shipped backbone from scratch (see :mod:`autoside.pretrain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoside.cli.registry import command


def _pretrain_args(parser: argparse.ArgumentParser) -> None:
    from autoside.backbones import WEIGHTS_DIR
    from autoside.pretrain import ALIASES, BACKBONES

    parser.add_argument("arch", choices=sorted(BACKBONES) + sorted(ALIASES))
    parser.add_argument(
        "--out",
        type=Path,
        default=WEIGHTS_DIR,
        help="folder for <name>.safetensors + <name>.json (default: the shipped weights folder)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; results are reproducible per count")
    parser.add_argument("--train-subset", type=int, help="use only the first N training images (smoke runs)")


@command("pretrain", "pretrain a shipped backbone (vit12_fmnist, resnet4s_fmnist) on Fashion-MNIST from scratch")(
    _pretrain_args
)
def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from autoside.errors import DataError
    from autoside.pretrain import pretrain

    torch.set_num_threads(args.threads)
    try:
        info = pretrain(
            args.arch,
            args.out,
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            train_subset=args.train_subset,
        )
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    print(
        f"{info['name']}: test accuracy {info['fashion_mnist_test_accuracy']:.4f} in {info['train_seconds']:.0f}s "
        f"-> {Path(args.out) / info['file']}"
    )
    return 0
