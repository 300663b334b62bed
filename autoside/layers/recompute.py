"""Activation recomputation (gradient checkpointing), one switch for every block that offers it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def recompute(fn: Callable[..., torch.Tensor], *args: object, enabled: bool = True) -> torch.Tensor:
    """``fn(*args)``, keeping only ``args`` for backward and running ``fn`` again there when ``enabled`` and autograd
    is recording: the same values and gradients for less memory and one more forward of ``fn``. Randomness inside
    ``fn`` (dropout, stochastic depth) replays identically. Normalisation layers that track running statistics belong
    outside ``fn``, or they would count each batch twice."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
