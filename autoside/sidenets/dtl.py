"""DTL and DTL+: Disentangled Transfer Learning (Fu, Zhu and Wu, "DTL: Disentangled Transfer Learning for Visual
Recognition", AAAI 2024), following the authors' official code (github.com/heekhero/DTL).

What is implemented, block by block (``i`` 0-indexed, ``M`` 1-indexed as in the paper):

* A *compact side network*: per tapped block a bias-free rank-``r`` map ``B_i A_i`` (``A_i`` r x d kaiming-uniform,
  ``B_i`` d x r zeros, :class:`~autoside.layers.LowRankLinear`) reads the block's **input**, all tokens including CLS,
  and is summed into a side state ``h``.
* From block ``M`` on, the block's output receives ``swish_beta(h) = h * sigmoid(beta * h)`` (beta = 100). DTL+ first
  passes ``swish_beta(h)`` through one shared depthwise ``k x k`` convolution (no bias, same padding) on the patch grid;
  prefix rows (CLS) bypass it (:class:`~autoside.layers.DepthwiseFusion`).
* Head: mean of the patch tokens, then the backbone's frozen final norm, then a trainable Linear (as in the official
  ViT code; for Swin the official code applies the norm before pooling, and so does this one).
* The frozen blocks ``1..M`` see nothing trainable, so they run under ``no_grad``: no activations are kept for them.
  From block ``M + 1`` on, the block inputs carry the side state, so gradients flow through the frozen weights; this is
  where DTL's memory goes, and why ``M`` is the main memory knob.
* Swin (timm layout, channels-last stages): one rank map per tapped block with that stage's width, ``h`` reset at the
  start of every stage, and one depthwise conv per stage that has both a tap and a merge block. A rank map or conv of a
  stage that has no tap or ends before block ``M`` could never reach the backbone (the official code builds a conv for
  every stage all the same; those never receive a gradient), so autoside leaves them out.
* The fusion kernel may be even (the official ViT scripts use 4 on some VTAB tasks): as PyTorch's "same" padding, the
  extra row and column of padding go after the grid, not before.
* Drop-path on the frozen blocks (``drop_path``, the largest rate, reached at the last block after a linear increase
  over depth as in timm; the official scripts pick up to 0.2 per ViT task and 0.0 to 0.5 per Swin task) is applied
  through :class:`~autoside.layers.SideDropPath`, because autoside keeps frozen backbones in eval mode.
* The family freezes the backbone it is given (a backbone that a ``full`` trial unfroze in the same process must not
  train here).

Trainable parameters without the head, ViT-B/16, all 12 blocks tapped: ``12 * 2 * 768 * r`` (36,864 for r = 2), plus
``768 * k * k`` for DTL+.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch
from torch import nn

from autoside.backbones import Backbone, BackboneSpec
from autoside.errors import ConfigError
from autoside.layers import DepthwiseFusion, LowRankLinear, SideDropPath, recompute, set_side_drop_path, swish
from autoside.sidenets import register_family, register_sidenet
from autoside.sidenets.base import SideConfig, SideNet, require


@dataclass(frozen=True)
class DTLConfig(SideConfig):
    """DTL (``kernel_size = 0``) or DTL+ (``kernel_size >= 1``).

    Attributes:
        rank: rank ``r`` of every map ``B_i A_i``.
        first_tap: first block (0-indexed) whose input feeds the side state.
        last_tap: last tapped block (0-indexed; -1: the last block).
        merge_from: ``M`` (1-indexed): blocks ``M..L`` receive ``swish(h)`` on their output; ``None``: ``L // 2 + 1``
            (7 of 12, as in the paper's ViT recipes).
        beta: swish sharpness.
        kernel_size: depthwise fusion kernel of DTL+ (0 = plain DTL; even sizes pad one more after than before).
        drop_path: the largest stochastic-depth rate on the frozen blocks (0 at the first block, linear over depth).
        dropout: dropout before the classifier.
    """

    family = "dtl"
    rank: int = 2
    first_tap: int = 0
    last_tap: int = -1
    merge_from: int | None = None
    beta: float = 100.0
    kernel_size: int = 0
    drop_path: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self.rank >= 1, "rank", f"must be at least 1, got {self.rank}")
        require(self.first_tap >= 0, "first_tap", f"must be a block index >= 0, got {self.first_tap}")
        require(self.last_tap >= -1, "last_tap", f"must be a block index >= 0 or -1 (last block), got {self.last_tap}")
        require(
            self.merge_from is None or self.merge_from >= 1,
            "merge_from",
            f"must be at least 1 (1-indexed block), got {self.merge_from}",
        )
        require(self.beta > 0, "beta", f"must be positive, got {self.beta}")
        require(
            self.kernel_size >= 0,
            "kernel_size",
            f"must be 0 (DTL) or a kernel size 1, 2, 3, ... (DTL+), got {self.kernel_size}",
        )
        require(0.0 <= self.drop_path < 1.0, "drop_path", f"must be in [0, 1), got {self.drop_path}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    def check_backbone(self, spec: BackboneSpec) -> None:
        require(
            spec.layout in ("vit", "swin"),
            "family",
            f"'dtl' needs a ViT or Swin backbone (layout 'vit' or 'swin'); {spec.name!r} has layout {spec.layout!r}",
        )
        narrowest = min(spec.widths)
        require(
            self.rank <= narrowest,
            "rank",
            f"must be in 1..{narrowest} (the narrowest block width of {spec.name!r}), got {self.rank}",
        )
        require(
            self.kernel_size == 0 or spec.has_patch_grid,
            "kernel_size",
            f"must be 0 for {spec.name!r}, which has no fixed patch grid (allowed: 0), got {self.kernel_size}",
        )
        self.check_depth(spec.num_taps if spec.layout == "vit" else _swin_depth(spec))

    def check_depth(self, depth: int) -> None:
        """Block indices against the backbone's number of blocks (all stages together on Swin)."""
        require(
            self.merge_from is None or self.merge_from <= depth,
            "merge_from",
            f"must be in 1..{depth} (the backbone has {depth} blocks), got {self.merge_from}",
        )
        require(self.first_tap < depth, "first_tap", f"must be in 0..{depth - 1}, got {self.first_tap}")
        last = depth - 1 if self.last_tap == -1 else self.last_tap
        require(
            self.first_tap <= last <= depth - 1,
            "last_tap",
            f"must be -1 or in {self.first_tap}..{depth - 1} (first_tap..last block), got {self.last_tap}",
        )

    def resolved(self, depth: int) -> tuple[range, int]:
        """The tapped block indices and ``M`` for a backbone with ``depth`` blocks."""
        last = depth - 1 if self.last_tap == -1 else self.last_tap
        merge_from = self.merge_from if self.merge_from is not None else depth // 2 + 1
        return range(self.first_tap, last + 1), merge_from


@functools.lru_cache(maxsize=16)
def _timm_swin_depth(timm_model: str, timm_kwargs: str) -> int:
    import timm

    with torch.device("meta"):  # the architecture only: no memory, no initialisation
        model = timm.create_model(timm_model, pretrained=False, num_classes=0, **json.loads(timm_kwargs))
    return sum(len(stage.blocks) for stage in model.layers)


def _swin_depth(spec: BackboneSpec) -> int:
    """Blocks of a Swin backbone over all stages; the spec lists stages only, so the architecture is built on the meta
    device (once per model): a search space's ``merge_from`` is then checked before any trial starts."""
    return _timm_swin_depth(spec.timm_model, json.dumps(spec.timm_kwargs, sort_keys=True))


def _check_model_class(model: nn.Module, spec: BackboneSpec) -> None:
    """DTL re-runs the backbone's forward block by block, which only follows timm's plain ViT and Swin layouts."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    expected = VisionTransformer if spec.layout == "vit" else SwinTransformer
    require(
        isinstance(model, expected),
        "family",
        f"'dtl' supports timm's VisionTransformer and SwinTransformer; {spec.name!r} is {type(model).__name__}",
    )


def _stages(model: nn.Module, layout: str) -> list[tuple[nn.Module | None, list[nn.Module]]]:
    """(downsample, blocks) per stage; a ViT is a single stage without downsampling."""
    if layout == "vit":
        return [(None, list(model.blocks))]
    return [(stage.downsample, list(stage.blocks)) for stage in model.layers]


@register_family
class DTL(SideNet):
    """Compact low-rank side network whose gated state is written back into the later frozen blocks."""

    config_class = DTLConfig
    writes_back = True
    supports_grad_checkpointing = True

    def __init__(self, config: DTLConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        backbone.freeze()
        spec, model = backbone.spec, backbone.model
        _check_model_class(model, spec)
        stages = _stages(model, spec.layout)
        depth = sum(len(blocks) for _, blocks in stages)
        taps, self.merge_from = config.resolved(depth)
        self.taps = tuple(taps)
        widths = [spec.widths[s] if spec.layout == "swin" else spec.widths[0] for s in range(len(stages))]

        self.maps = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        start = 0
        for s, (_, blocks) in enumerate(stages):
            # h is reset at each stage: its taps (and conv) reach the backbone only if the stage has a block >= M.
            stage = range(start, start + len(blocks))
            live = [i for i in stage if i in taps] if stage[-1] >= self.merge_from - 1 else []
            for i in live:
                self.maps[str(i)] = LowRankLinear(widths[s], widths[s], config.rank)
            if config.kernel_size and live:
                self.fusions[str(s)] = DepthwiseFusion(
                    widths[s], config.kernel_size, grid_size=spec.grid_size, num_prefix_tokens=spec.num_prefix_tokens
                )
            start += len(blocks)

        self.drop_paths: list[SideDropPath] = []
        if config.drop_path > 0:
            for i, block in enumerate(b for _, blocks in stages for b in blocks):
                try:
                    self.drop_paths += set_side_drop_path(block, config.drop_path * i / max(1, depth - 1))
                except ValueError as exc:
                    raise ConfigError(f"sidenet.drop_path: must be 0 for {spec.name!r} ({exc})") from None
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(spec.num_features, num_classes)

    def train(self, mode: bool = True) -> DTL:
        super().train(mode)
        for module in self.drop_paths:  # stochastic depth follows the side network, not the frozen backbone
            module.active = mode
        return self

    def _final_norm_module(self) -> nn.Module:
        # The backbone's own frozen norm (not registered here, so it stays out of the side state dict).
        model = self.backbone.model
        return (
            model.fc_norm if self.backbone.spec.layout == "vit" and isinstance(model.norm, nn.Identity) else model.norm
        )

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._final_norm_module()(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone.spec.layout == "swin":
            return self.backbone.model.patch_embed(x)
        return self.backbone.taps(x, ("embed",))["embed"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self._embed(x)
        return self._run(x)

    def uncacheable_reason(self) -> str | None:
        if self.config.drop_path > 0 and self.merge_from > 1:
            return (
                f"'dtl' with drop_path={self.config.drop_path}: stochastic depth drops residual branches of blocks "
                f"2..{self.merge_from} at random while training, so the tokens entering block {self.merge_from + 1} "
                "differ every step (stored features are exact only with merge_from=1 or drop_path=0)"
            )
        return super().uncacheable_reason()

    def feature_taps(self) -> tuple[str, ...] | None:
        """Blocks ``1..M`` are a pure function of the image (unless stochastic depth makes them random): their inputs
        (what the maps read) and block ``M``'s output can be stored; ``side`` runs blocks ``M+1..L`` (1-indexed)."""
        if self.config.drop_path > 0 and self.merge_from > 1:
            return None
        last = self.merge_from - 1
        inputs = [self._input_tap(i) for i in sorted(int(k) for k in self.maps) if i <= last]
        output = f"tokens:{last}" if self.backbone.spec.layout == "vit" else f"block:{last}"
        return tuple(dict.fromkeys([*inputs, output]))

    def _input_tap(self, block: int) -> str:
        """The stored feature that enters ``block`` (0-indexed): on a ViT the embedded tokens or the previous block's
        output; on a Swin the previous block's output within a stage, else the stage's (downsampled) input."""
        if self.backbone.spec.layout == "vit":
            return "embed" if block == 0 else f"tokens:{block - 1}"
        return f"block_in:{block}" if block in self._stage_starts() else f"block:{block - 1}"

    def _stage_starts(self) -> list[int]:
        starts, i = [], 0
        for _, blocks in _stages(self.backbone.model, self.backbone.spec.layout):
            starts.append(i)
            i += len(blocks)
        return starts

    def side_modules(self) -> dict[str, nn.Module]:
        later: list[nn.Module] = []
        i = 0
        for downsample, blocks in _stages(self.backbone.model, self.backbone.spec.layout):
            if i >= self.merge_from and downsample is not None:
                later.append(downsample)
            later += blocks[max(0, self.merge_from - i) :]
            i += len(blocks)
        return {**super().side_modules(), "later_blocks": nn.ModuleList(later), "final_norm": self._final_norm_module()}

    def side(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        last = self.merge_from - 1
        h = None
        for i in sorted(int(k) for k in self.maps):
            if i <= last:  # every map up to M sits in M's stage: a stage without a block >= M has none
                update = self.maps[str(i)](feats[self._input_tap(i)])
                h = update if h is None else h + update
        x = feats[self.feature_taps()[-1]]
        stage = sum(start <= last for start in self._stage_starts()) - 1
        return self._run(self._merge(x, h, stage), first=self.merge_from, h=h)

    def _merge(self, x: torch.Tensor, h: torch.Tensor | None, stage: int) -> torch.Tensor:
        if h is None:
            return x
        gated = swish(h, self.config.beta)
        return x + (self.fusions[str(stage)](gated) if str(stage) in self.fusions else gated)

    def _run(self, x: torch.Tensor, *, first: int = 0, h: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks ``first..`` (0-indexed) on the embedded tokens ``x`` (or on block ``first - 1``'s merged output with
        the side state ``h`` so far), then the final norm and the head."""
        spec, grad = self.backbone.spec, torch.is_grad_enabled()
        i = 0
        for s, (downsample, blocks) in enumerate(_stages(self.backbone.model, spec.layout)):
            if i + len(blocks) <= first:
                i += len(blocks)
                continue
            if i >= first:
                if downsample is not None:
                    with torch.set_grad_enabled(grad and x.requires_grad):
                        x = downsample(x)
                h = None  # the side state; reset at each Swin stage, as in the official code
            for block in blocks:
                if i < first:
                    i += 1
                    continue
                if str(i) in self.maps:
                    update = self.maps[str(i)](x)
                    h = update if h is None else h + update
                # Blocks 1..M see no trainable input: no graph, no saved activations. Later ones pass gradients
                # back to the side network; with checkpointing they keep only their input and run again in backward.
                with torch.set_grad_enabled(grad and i >= self.merge_from):
                    x = recompute(block, x, enabled=self.grad_checkpointing)
                if i >= self.merge_from - 1:
                    x = self._merge(x, h, s)
                i += 1
        if spec.layout == "swin":
            features = self._final_norm(x).mean(dim=(1, 2))
        else:
            features = self._final_norm(x[:, spec.num_prefix_tokens :].mean(dim=1))
        return self.head(self.drop(features))


def _preset(**kwargs: object) -> dict[str, object]:
    return dict(kwargs)


@register_sidenet("dtl")
def dtl_vit_b16() -> dict[str, object]:
    """Official ViT-B/16 VTAB recipe: r = 2, all 12 blocks tapped, M = 7, beta = 100, drop-path 0.1 (0.1 or 0.2 per
    task in the official scripts)."""
    return _preset(rank=2, first_tap=0, last_tap=-1, merge_from=7, beta=100.0, kernel_size=0, drop_path=0.1)


@register_sidenet("dtl")
def dtl_plus_vit_b16() -> dict[str, object]:
    """DTL+ on ViT-B/16: as ``dtl_vit_b16`` plus a shared 3 x 3 depthwise fusion."""
    return {**dtl_vit_b16(), "kernel_size": 3}


@register_sidenet("dtl")
def dtl_swin_b() -> dict[str, object]:
    """Official Swin-B VTAB recipe: r = 4, blocks 4..23 tapped (0-indexed), M = 15, beta = 100, drop-path 0.1 (the
    official scripts pick 0.0 to 0.5 per task; ``search_spaces/dtl_swin.yaml`` searches it)."""
    return _preset(rank=4, first_tap=4, last_tap=-1, merge_from=15, beta=100.0, kernel_size=0, drop_path=0.1)


@register_sidenet("dtl")
def dtl_vit12_fmnist() -> dict[str, object]:
    """The shipped 12-block ViT (width 96, 4 x 4 patch grid): r = 4, all blocks tapped, M = 7."""
    return _preset(rank=4, first_tap=0, last_tap=-1, merge_from=7, beta=100.0, kernel_size=0, drop_path=0.0)


@register_sidenet("dtl")
def dtl_plus_vit12_fmnist() -> dict[str, object]:
    """DTL+ on the shipped ViT: ``dtl_vit12_fmnist`` plus a 3 x 3 depthwise fusion on its 4 x 4 grid."""
    return {**dtl_vit12_fmnist(), "kernel_size": 3}
