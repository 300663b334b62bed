"""Structured channel pruning of copied CNN stages with torch-pruning, and its replay from stored widths.

:func:`prune_stages` removes whole channels with torch-pruning's dependency graph and ``MetaPruner`` (one ratio per
stage, channel counts rounded to a multiple of ``round_to``): coupled layers (a residual sum, a depthwise conv, the
next stage's input) lose the same channels, so the result is a smaller dense network. What is kept is recorded as
plain widths (:func:`conv_widths`); :func:`prune_to_widths` rebuilds that architecture from the widths alone, which is
how an export is loaded (its weights then overwrite every tensor). torch-pruning's own pickled state is never used.

The pruned module holds only the copied stages: the stem and the classifier are not in it (so never pruned), and the
first stage's input channels, which the frozen stem produces, cannot change: a stand-in stem is an ignored layer, so
channels tied to the input (a residual sum on it, a depthwise conv reading it) keep their width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMPORTANCES = ("magnitude", "taylor", "bn_scale")


class Stages(nn.Module):
    """Stages run one after the other; ``forward`` returns every stage's output."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


def conv_widths(module: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name."""
    return {name: m.out_channels for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"unknown importance {name!r} (allowed: {', '.join(IMPORTANCES)})")


def prune_stages(
    stages: Stages, example: torch.Tensor, ratios: Sequence[float], *, importance: str, round_to: int = 8
) -> None:
    """Prune ``stages`` in place, stage ``i`` by ``ratios[i]`` of its channels (0: untouched).

    ``taylor`` importance needs gradients: it uses the gradient of the stages' output energy (the mean square of
    every stage output) on ``example``, so channels that carry little of the signal go first.
    """
    import torch_pruning as tp

    if not any(ratios):
        return
    stages.requires_grad_(True)
    if importance == "taylor":
        stages.zero_grad(set_to_none=True)
        sum(out.pow(2).mean() for out in stages(example)).backward()
    guarded = _InputGuard(stages, example.shape[1])
    pruner = tp.pruner.MetaPruner(
        guarded,
        example,
        importance=_importance(importance),
        pruning_ratio=0.0,
        pruning_ratio_dict={stage: ratio for stage, ratio in zip(stages.stages, ratios) if ratio > 0},
        round_to=round_to,
        ignored_layers=[guarded.stem],
    )
    pruner.step()
    stages.zero_grad(set_to_none=True)


class _InputGuard(nn.Module):
    """The stages behind a 1 x 1 conv that the pruner must leave alone: it stands for the frozen stem, so every
    channel coupled to the stages' input (a residual sum on it, a depthwise conv reading it) keeps its width."""

    def __init__(self, stages: Stages, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, channels, 1)
        self.stages = stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.stages(self.stem(x))


def prune_to_widths(stages: Stages, example: torch.Tensor, widths: dict[str, int]) -> list[str]:
    """Shrink ``stages`` to the stored ``widths`` (dropping the last channels of each coupled group).

    Returns the problems found (unknown or missing layers, widths that cannot be reached); empty when it matches.
    """
    import torch_pruning as tp

    current = conv_widths(stages)
    problems = [f"unknown layer {k!r}" for k in sorted(set(widths) - set(current))]
    problems += [f"no width for layer {k!r}" for k in sorted(set(current) - set(widths))]
    problems += [
        f"{k}: {widths[k]} > {current[k]} channels"
        for k in sorted(set(widths) & set(current))
        if widths[k] > current[k]
    ]
    if problems:
        return problems
    stages.requires_grad_(True)  # the graph is traced through autograd
    graph = tp.DependencyGraph().build_dependency(stages, example_inputs=example)
    for name, module in stages.named_modules():
        if isinstance(module, nn.Conv2d) and module.out_channels > widths[name]:
            idxs = list(range(widths[name], module.out_channels))
            graph.get_pruning_group(module, tp.prune_conv_out_channels, idxs=idxs).prune()
    return [f"{k}: has {v} channels, stored {widths[k]}" for k, v in conv_widths(stages).items() if v != widths[k]]
