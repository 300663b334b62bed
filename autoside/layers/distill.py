"""Distillation losses from a frozen teacher (the backbone) to a lighter student (a side network)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the teacher's mean square, so stages of any scale weigh alike."""
    teacher = teacher.detach()
    return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-6)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al. 2015), averaged over the batch."""
    log_p = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2
