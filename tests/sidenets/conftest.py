"""Checks shared by the family tests: which parameters a loss can reach, and freezing done by the family."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from autoside.sidenets import SideNet


def _graph_leaves(loss: torch.Tensor) -> set[int]:
    """Ids of the leaf tensors that ``loss.backward()`` would write a gradient into (a walk of the autograd graph:
    every ``AccumulateGrad`` node holds one), so a backbone weight that trains shows up whatever its ``.grad`` says."""
    seen, leaves, stack = set(), set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


@pytest.fixture
def trained_backbone_params() -> Callable[[SideNet, torch.Tensor, torch.Tensor], list[str]]:
    """Names of the backbone parameters one training step of ``model`` on ``(x, y)`` would update; also asserts that
    every side parameter reaches the loss."""

    def check(model: SideNet, x: torch.Tensor, y: torch.Tensor) -> list[str]:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        leaves = _graph_leaves(loss)
        side = [(n, p) for n, p in model.named_parameters() if not n.startswith("backbone.")]
        missing = [n for n, p in side if id(p) not in leaves]
        assert not missing, f"side parameters the loss does not reach: {missing[:3]}"
        return [n for n, p in model.backbone.named_parameters() if id(p) in leaves]

    return check


@pytest.fixture
def assert_family_freezes() -> Callable[[Callable[..., SideNet], object], None]:
    """Build a family on a backbone that was left trainable (as a ``full`` trial leaves it) and check that the family
    froze it: no backbone parameter requires a gradient or sits in the optimizer's groups."""

    def check(build: Callable[..., SideNet], backbone) -> None:
        from autoside.train import param_groups

        backbone.unfreeze()
        model = build(backbone)
        trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        assert not trainable, f"the family left backbone parameters trainable: {trainable[:3]}"
        optimised = {id(p) for group in param_groups(model, 0.05) for p in group["params"]}
        leaked = [n for n, p in model.backbone.named_parameters() if id(p) in optimised]
        assert not leaked, f"backbone parameters in the optimizer: {leaked[:3]}"
        assert optimised == {id(p) for p in model.side_parameters()}
        assert not model.backbone.model.training, "a frozen backbone must be in eval mode"

    return check
