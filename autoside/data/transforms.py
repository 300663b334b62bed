"""Batch preprocessing on tensors: uint8 images -> the float input a backbone's data config asks for.

Done per batch on the training device (not per image with PIL), so small offline datasets train at full speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class Preprocess(torch.nn.Module):
    """Scale to [0, 1], resize to the backbone's input size, repeat gray to RGB, normalise with its mean/std (images
    ``(N, C, H, W)`` or clips ``(N, T, C, H, W)``)."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bilinear"):
        super().__init__()
        self.image_size = int(image_size)
        self.mode = "bicubic" if interpolation == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_data_config(cls, data_config: dict) -> Preprocess:
        return cls(
            data_config["input_size"][-1],
            data_config["mean"],
            data_config["std"],
            data_config.get("interpolation", "bilinear"),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 5:  # clips (B, T, C, H, W): every frame like an image
            return self(images.flatten(0, 1)).unflatten(0, images.shape[:2])
        x = images.to(self.mean.device, torch.float32) / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode=self.mode, align_corners=False, antialias=True
            )
        return (x - self.mean) / self.std


class RandomResizedCropFlip(torch.nn.Module):
    """Training augmentation as timm's ``create_transform(is_training=True)`` defaults to: a random crop of 8-100 %
    of the area with aspect ratio 3/4-4/3, resized back to the input size, then a horizontal flip half the time.

    Off by default (the VTAB-style recipe): augmented inputs differ every epoch, so backbone features cannot be cached.
    """

    def __init__(self, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        super().__init__()
        self.scale, self.ratio = scale, ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import RandomResizedCrop

        size = x.shape[-2:]
        out = []
        for image in x:
            top, left, h, w = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
            crop = image[None, :, top : top + h, left : left + w]
            crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)
            out.append(crop.flip(-1) if torch.rand(()) < 0.5 else crop)
        return torch.cat(out)
