"""CST: Calibration Side-Tuning (Feng Chen, "CST: Calibration Side-Tuning for Parameter and Memory Efficient Transfer
Learning", arXiv 2402.12736, 2024). The paper has no public code; this family is autoside's reading of it.

What the paper states: a small side network runs beside a frozen ResNet; its features *calibrate* the backbone's stage
features through a gate called Maximum (Maximal) Transition Calibration (MTC), which keeps training smooth with few
extra parameters; the side network is made light by knowledge distillation, by pruning, and by removing intermediate
residual layers of the later stages (which hold most of the parameters); it is evaluated on object detection.

What autoside infers, and why (each open point is a knob, so a search can settle it):

* The side network is a copy of the backbone's calibrated stages ``first_stage..last`` (``init="copy"``; ``"random"``
  for a from-scratch side), fed by the frozen feature before them (the stem's, or stage ``first_stage - 1``'s output),
  so nothing before the first calibrated stage is duplicated or kept for backward. A copy starts where the backbone
  is, so calibration begins from a useful feature.
* Made light three ways: structured channel pruning with torch-pruning (:mod:`autoside.layers.pruning`: ratio per
  stage, importance ``magnitude`` / ``taylor`` / ``bn_scale``, widths rounded to ``round_to``; the stem and the
  classifier are outside the copy and never pruned); block dropping (``drop_blocks`` residual blocks removed, the last
  blocks of the last stage first, then the stage before, each stage keeping its first block, which holds the
  downsampling); and distillation from the frozen backbone (a relative MSE between the side's projected stage outputs
  and the backbone's, ``lambda_feat``; KL at temperature ``T`` between the head's logits on the side's and on the
  backbone's final features, ``lambda_kd``; the first ``distill_epochs`` epochs, as the trainer announces them
  through ``begin_epoch``, distil only and keep no graph for the task path).
* Calibration at stages ``first_stage..last``: a 1 x 1 projection brings the side feature to the backbone's width
  (identity where they agree; the same projection serves the feature distillation), then a gate
  ``b + g * (s - b)`` (:mod:`autoside.layers.calibration`). MTC is read as a per-channel gate driven by each branch's
  global *maximum* response: the name says maximum and transition, the paper stresses few parameters and smooth
  training, so ``g`` has three parameters per channel and starts near zero. The scalar (LST), per-channel and spatial
  gates are the alternatives.
* Where the calibrated feature goes (``writes_back``): into the next frozen stage, as an adapter would (gradients then
  flow through the later frozen stages, which costs their activations), or only to the head, which then reads the
  pooled calibrated features of every calibrated stage (no gradient through the backbone, which runs without autograd).

The pruned widths are resolved when the side network is first built and stored in the config (``widths``), so an
export rebuilds exactly that architecture from ``side_config.json`` and loads its safetensors strictly.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from autoside.backbones import Backbone, BackboneSpec
from autoside.layers.calibration import create_calibration_gate
from autoside.layers.distill import feature_distillation, logit_distillation
from autoside.layers.pruning import Stages, conv_widths, prune_stages, prune_to_widths
from autoside.layers.recompute import recompute
from autoside.layers.staged import reinitialise, run_modules, staged_cnn
from autoside.sidenets import register_family, register_sidenet
from autoside.sidenets.base import SideConfig, SideNet, require


@dataclass(frozen=True)
class CSTConfig(SideConfig):
    """CST knobs (see the module docstring).

    Attributes:
        first_stage: first calibrated stage (0-indexed); every later stage is calibrated too.
        gate: ``mtc``, ``scalar`` (LST), ``channel`` or ``spatial``.
        writes_back: the calibrated feature feeds the next backbone stage (True) or only the head (False).
        prune_ratio: share of channels pruned in every stage, in [0, 1).
        stage_prune_ratios: one ratio per backbone stage instead (empty: ``prune_ratio`` everywhere, which is
            otherwise unused; stages before ``first_stage`` are not copied, so their ratios are unused and kept at 0).
        importance: channel importance for pruning: ``magnitude``, ``taylor`` or ``bn_scale``.
        round_to: pruned widths are multiples of this.
        drop_blocks: residual blocks removed from the side copy, later stages first (each stage keeps one).
        init: side weights from the pruned ``copy`` of the frozen backbone, or ``random``.
        lambda_feat: weight of the feature distillation loss.
        lambda_kd: weight of the logit distillation loss.
        temperature: temperature of the logit distillation (unused, and kept at its default, when ``lambda_kd``
            is 0).
        distill_epochs: first epochs that train on the distillation losses only (unused, and kept at 0, when both
            lambdas are 0, so that a search space can vary them independently).
        dropout: dropout before the classifier.
        widths: the pruned side network's convolution widths (side stage 0 is backbone stage ``first_stage``);
            filled in when the side network is built.
    """

    family = "cst"
    first_stage: int = 0
    gate: Literal["mtc", "scalar", "channel", "spatial"] = "mtc"
    writes_back: bool = True
    prune_ratio: float = 0.5
    stage_prune_ratios: tuple[float, ...] = ()
    importance: Literal["magnitude", "taylor", "bn_scale"] = "magnitude"
    round_to: int = 8
    drop_blocks: int = 0
    init: Literal["copy", "random"] = "copy"
    lambda_feat: float = 0.0
    lambda_kd: float = 0.0
    temperature: float = 4.0
    distill_epochs: int = 0
    dropout: float = 0.0
    widths: dict[str, int] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        require(self.first_stage >= 0, "first_stage", f"must be a stage index >= 0, got {self.first_stage}")
        require(0.0 <= self.prune_ratio < 1.0, "prune_ratio", f"must be in [0, 1), got {self.prune_ratio}")
        for i, ratio in enumerate(self.stage_prune_ratios):
            require(0.0 <= ratio < 1.0, f"stage_prune_ratios[{i}]", f"must be in [0, 1), got {ratio}")
        require(self.round_to >= 1, "round_to", f"must be at least 1, got {self.round_to}")
        require(self.drop_blocks >= 0, "drop_blocks", f"must be >= 0, got {self.drop_blocks}")
        require(self.lambda_feat >= 0, "lambda_feat", f"must be >= 0, got {self.lambda_feat}")
        require(self.lambda_kd >= 0, "lambda_kd", f"must be >= 0, got {self.lambda_kd}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.distill_epochs >= 0, "distill_epochs", f"must be >= 0, got {self.distill_epochs}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        # Valid knobs that shape nothing here are kept at fixed values (see ``SideConfig._unused``).
        if self.stage_prune_ratios:
            first = min(self.first_stage, len(self.stage_prune_ratios))
            self._unused(prune_ratio=None)
            self._unused_elements("stage_prune_ratios", first, 0.0)  # the stages before first_stage are not copied
        if self.lambda_kd == 0:
            self._unused(temperature=None)
        if not self.distils:
            self._unused(distill_epochs=None)

    @property
    def distils(self) -> bool:
        return self.lambda_feat > 0 or self.lambda_kd > 0

    def unresolved(self) -> CSTConfig:
        return self.replace(widths=None)

    def check_backbone(self, spec: BackboneSpec) -> None:
        require(
            spec.layout == "cnn",
            "family",
            f"'cst' needs a staged CNN (timm ResNet or EfficientNet); {spec.name!r} has layout {spec.layout!r}",
        )

    def check_stages(self, depths: list[int], name: str) -> None:
        n = len(depths)
        require(
            self.first_stage < n,
            "first_stage",
            f"must be in 0..{n - 1} ({name!r} has {n} stages), got {self.first_stage}",
        )
        require(
            len(self.stage_prune_ratios) in (0, n),
            "stage_prune_ratios",
            f"must list one ratio per stage ({n} for {name!r}) or none, got {len(self.stage_prune_ratios)}",
        )

    def blocks_kept(self, depths: list[int]) -> list[int]:
        """Blocks per stage after dropping ``drop_blocks``, from the last stage backwards (at least one each)."""
        kept, left = list(depths), self.drop_blocks
        for i in reversed(range(len(kept))):
            take = min(left, kept[i] - 1)
            kept[i] -= take
            left -= take
        return kept


@register_family
class CST(SideNet):
    """A pruned, block-dropped copy of the backbone's stages whose features calibrate the frozen stage outputs."""

    config_class = CSTConfig
    writes_back = True
    supports_grad_checkpointing = True

    def __init__(self, config: CSTConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__(config, backbone, num_classes)
        spec = backbone.spec
        staged = staged_cnn(backbone.model)
        require(
            staged is not None,
            "family",
            f"'cst' needs a timm ResNet or EfficientNet; {spec.name!r} is {type(backbone.model).__name__}",
        )
        stem, stages, self._tail = staged
        self._stem, self._stages = stem, stages  # plain lists: the frozen modules stay out of the side state dict
        depths = [len(stage) for stage in stages]
        config.check_stages(depths, spec.name)
        self.writes_back = config.writes_back
        self.first_stage = first = config.first_stage

        kept = config.blocks_kept(depths[first:])
        side = Stages([nn.Sequential(*list(copy.deepcopy(s))[:k]) for s, k in zip(stages[first:], kept)])
        noise = torch.randn(2, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            example = self._side_input(noise)
            backbone_widths = [out.shape[1] for out in self._calibrated_stages(example)]
        ratios = (config.stage_prune_ratios or (config.prune_ratio,) * len(stages))[first:]
        if config.widths is None:
            prune_stages(side, example, ratios, importance=config.importance, round_to=config.round_to)
            self.config = config.replace(widths=conv_widths(side))
        else:
            problems = prune_to_widths(side, example, config.widths)
            require(not problems, "widths", f"do not fit {spec.name!r}: {'; '.join(problems[:3])}")
        if config.init == "random":
            reinitialise(side)
        with torch.no_grad():  # in eval mode, the copy's BatchNorm statistics stay the backbone's
            side_widths = [out.shape[1] for out in side.eval()(example)]
        self.side_net = side.requires_grad_(True).train()

        self.proj = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        for k, (sw, bw) in enumerate(zip(side_widths, backbone_widths)):
            self.proj[str(first + k)] = nn.Identity() if sw == bw else nn.Conv2d(sw, bw, 1)
            self.gates[str(first + k)] = create_calibration_gate(config.gate, bw)
        head_width = spec.num_features if self.writes_back else sum(backbone_widths)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(head_width, num_classes)
        self._epoch: int | None = None  # set by the trainer (begin_epoch); unset: no warm-up
        self._distil: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def _side_input(self, x: torch.Tensor, early: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The frozen feature the first calibrated stage reads (the stem's, or the stage before's output); the outputs
        of the uncalibrated stages before it are appended to ``early`` when given."""
        x = run_modules(self._stem, x)
        for stage in self._stages[: self.first_stage]:
            x = stage(x)
            if early is not None:
                early.append(x)
        return x

    def _calibrated_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The plain frozen outputs of the calibrated stages for their input ``x`` (no calibration)."""
        outputs = []
        for stage in self._stages[self.first_stage :]:
            x = stage(x)
            outputs.append(x)
        return outputs

    def _pool(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Head input: the backbone's own tail and pooling on the last feature, or every calibrated feature pooled."""
        if self.writes_back:
            return self.backbone.model.forward_head(run_modules(self._tail, features[-1]), pre_logits=True)
        return torch.cat([f.mean(dim=(2, 3)) for f in features], dim=1)

    def _task_grad(self) -> bool:
        """Whether the task path keeps a graph: not during the distil-only warm-up (nothing would train on it)."""
        grad = torch.is_grad_enabled()
        return grad and not (self._distils_now() and self._warming_up)

    def _distils_now(self) -> bool:
        return self.training and torch.is_grad_enabled() and self.config.distils

    def _calibrate(self, x: torch.Tensor, early: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The calibrated outputs of stages ``first_stage..last`` (and, in ``early``, the plain outputs of the stages
        before); a training forward that distils keeps the side's and the teacher's features for the loss."""
        distil, task_grad = self._distils_now(), self._task_grad()
        with torch.no_grad():
            start = self._side_input(x, early)
        b, s = start, start
        calibrated, side_features, plain = [], [], []
        for k, (stage, side_stage) in enumerate(zip(self._stages[self.first_stage :], self.side_net.stages)):
            # A frozen stage is on the gradient path only when its input carries the side network's calibration;
            # checkpointing recomputes it in backward (frozen, so in eval mode: its BatchNorm statistics stay put).
            with torch.set_grad_enabled(task_grad and b.requires_grad):
                out = recompute(stage, b, enabled=self.grad_checkpointing)
            s = side_stage(s)
            side_features.append(self.proj[str(self.first_stage + k)](s))
            with torch.set_grad_enabled(task_grad):
                calibrated.append(self.gates[str(self.first_stage + k)](out, side_features[-1]))
            plain.append(out)
            b = calibrated[-1] if self.writes_back else out
        self._distil = None
        if distil:
            if self.writes_back:  # later stage outputs saw the calibration; the teacher is the plain backbone
                with torch.no_grad():
                    plain = self._calibrated_stages(start)
            self._distil = (side_features, plain)
        return calibrated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calibrated = self._calibrate(x)
        with torch.set_grad_enabled(self._task_grad()):
            return self.head(self.drop(self._pool(calibrated)))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen stages before ``first_stage`` as they are, then the calibrated ones: with ``writes_back`` off
        these go only to the dense head (no gradient through any frozen stage)."""
        early: list[torch.Tensor] = []
        calibrated = self._calibrate(x, early)
        return early + calibrated

    def begin_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def training_phase(self) -> Hashable:
        return "distill" if self._warming_up else "train"

    @property
    def _warming_up(self) -> bool:
        return self._epoch is not None and self._epoch < self.config.distill_epochs

    def training_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        """The task loss plus distillation (distillation alone during the first ``distill_epochs``)."""
        if self._distil is None:
            return task_loss
        side_features, teacher_features = self._distil
        self._distil = None
        config = self.config
        terms = [] if self._warming_up else [task_loss]
        if config.lambda_feat > 0:
            per_stage = [feature_distillation(s, t) for s, t in zip(side_features, teacher_features)]
            terms.append(config.lambda_feat * torch.stack(per_stage).mean())
        if config.lambda_kd > 0:
            with torch.no_grad():
                teacher = self.head(self._pool(teacher_features))
            student = self.head(self._pool(side_features))
            terms.append(config.lambda_kd * logit_distillation(student, teacher, config.temperature))
        return sum(terms[1:], terms[0])


@register_sidenet("cst")
def cst_resnet4s_fmnist() -> dict[str, object]:
    """The shipped 4-stage ResNet (widths 24-192, 2 blocks per stage): the best of an 8-trial search over
    ``search_spaces/cst.yaml`` on Animal-MNIST (``benchmarks/README.md``): stages 2-3 calibrated by MTC and written
    back, 3/4 of the channels pruned, one block dropped from each copied stage, a from-scratch side network."""
    return dict(
        first_stage=2,
        gate="mtc",
        writes_back=True,
        prune_ratio=0.75,
        importance="magnitude",
        drop_blocks=2,
        init="random",
        dropout=0.3,
    )


@register_sidenet("cst")
def cst_resnet50() -> dict[str, object]:
    """ResNet-50: the last two stages calibrated by MTC and written back (so only stage 4 is on the gradient path),
    3/4 of their channels pruned, two blocks dropped from each (3 -> 1 and 6 -> 4: the later stages hold most
    parameters), feature distillation with one distil-only epoch."""
    return dict(
        first_stage=2,
        gate="mtc",
        writes_back=True,
        prune_ratio=0.75,
        importance="magnitude",
        drop_blocks=4,
        lambda_feat=1.0,
        distill_epochs=1,
    )


@register_sidenet("cst")
def cst_det_resnet4s_fmnist() -> dict[str, object]:
    """Detection on the shipped ResNet (``trials/pasted_objects_resnet.yaml``): every stage calibrated by MTC, the
    calibrated maps going only to the detector's feature pyramid (no gradient through a frozen stage), half of the
    copied channels pruned, side weights from the pruned copy of the frozen ones."""
    return dict(first_stage=0, gate="mtc", writes_back=False, prune_ratio=0.5, init="copy")
