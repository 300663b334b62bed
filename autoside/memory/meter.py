"""Measured peak training memory of a trial, and the budget it must stay under.

Two meters, both measured, never estimated:

* **CUDA allocator peak** (``torch.cuda.max_memory_allocated``, reset at the start of a trial): what the papers report
  and what decides whether a trial fits on a GPU. It includes the CUDA workspace of kernels and allocator rounding.
* **Live tensor bytes** (:class:`LiveTensorTracker`), on any device: every ATen call made while the tracker is active
  is seen through a ``TorchDispatchMode``; each tensor storage it returns is counted once (views of a storage add
  nothing) from its creation until it is freed. Parameters, buffers and the input batch that existed before the
  tracker started are counted when registered with :meth:`LiveTensorTracker.register`. The figure therefore covers
  parameters and buffers, gradients, optimizer state, tensors saved for backward and transient tensors (outputs not
  yet freed), sampled after every operator. It does not include allocator caching, fragmentation or kernel
  workspaces, so on CUDA it is a lower bound of the allocator peak; both are recorded so they can be compared.

The tracker also counts the bytes of distinct storages saved for backward in the current step
(``saved_tensors_hooks``), excluding parameters and buffers: the activation memory that side tuning saves.

On CPU the tracker enforces the budget: the operator that takes live bytes over it raises
:class:`MemoryBudgetExceeded`. On CUDA the budget is a per-process allocator cap.

**Sampled tracking.** A Python hook on every operator costs more than the training it watches (x1.5-1.9 on CPU), so
the training loop tracks only the steps that can set a new peak (:class:`TrackingPolicy`): the first
``warmup_steps`` (2) steps of the first epoch and of every epoch that starts a new training phase (the optimizer
state appears at the trial's first step, the gradients of a previous step coexist with the activations from the
second on; a family whose step changes at an epoch boundary, such as CST's distillation warm-up ending, names its
phase through ``training_phase()``) and every step whose input shape was not seen before (the last partial batch);
the other steps run untracked. Steps of one shape and phase after the warm-up allocate the same storages in the same
order, whatever the epoch, so the sampled peak equals the fully tracked peak exactly (``tests/memory/test_sampled.py``).
Storages created by a tracked step and still alive stay counted (their entries free themselves through weak
references); what an untracked step leaves behind (this step's gradients) is registered when tracking resumes. On
CUDA the allocator peak alone is the default: the tracker runs only on request (``memory_tracking: sampled|all``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoside.errors import AutosideError, ConfigError
from autoside.units import format_bytes


class MemoryBudgetExceeded(AutosideError):
    """A trial crossed its memory budget; the search records it as infeasible."""

    def __init__(self, used_bytes: int, budget_bytes: int, where: str = "training") -> None:
        self.used_bytes = int(used_bytes)
        self.budget_bytes = int(budget_bytes)
        super().__init__(
            f"{where} needs at least {format_bytes(used_bytes)}, over the memory budget of {format_bytes(budget_bytes)}"
        )


class LiveTensorTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages on one device type and keeps the peak (see module docstring)."""

    def __init__(self, device: torch.device | str = "cpu", budget_bytes: int | None = None) -> None:
        super().__init__()
        self.device_type = torch.device(device).type
        self.budget_bytes = budget_bytes
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, tuple[int, Any]] = {}
        self._saved: dict[int, int] = {}
        self._state_ptrs: set[int] = set()
        self.saved_peak_bytes = 0

    # -- live storages -------------------------------------------------------------------------------------------
    def _track(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or ptr in self._live:
            return
        self._live[ptr] = (nbytes, weakref.ref(storage, lambda _ref, ptr=ptr: self._free(ptr)))
        self.live_bytes += nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes

    def _free(self, ptr: int) -> None:
        entry = self._live.pop(ptr, None)
        if entry is not None:
            self.live_bytes -= entry[0]

    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that were created before the tracker started (parameters, buffers, the batch)."""
        for t in tensors:
            self._track(t)
        self._check()

    def register_state(self, tensors: Iterable[torch.Tensor]) -> None:
        """Register parameters and buffers; they are never counted as saved activations."""
        tensors = list(tensors)
        self._state_ptrs.update(t.untyped_storage().data_ptr() for t in tensors if t.device.type == self.device_type)
        self.register(tensors)

    def _check(self) -> None:
        if self.budget_bytes is not None and self.live_bytes > self.budget_bytes:
            raise MemoryBudgetExceeded(self.live_bytes, self.budget_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        self._check()
        return out

    # -- tensors saved for backward ---------------------------------------------------------------------------------
    def new_step(self) -> None:
        """Start counting saved activations of a new forward pass."""
        self._saved.clear()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type == self.device_type:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self._state_ptrs and ptr not in self._saved:
                self._saved[ptr] = t.untyped_storage().nbytes()
                self.saved_peak_bytes = max(self.saved_peak_bytes, sum(self._saved.values()))
        return t

    def saved_tensors_hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)


TRACKING_MODES = ("auto", "sampled", "all")
Tracking = Literal["auto", "sampled", "all", "off"]


def resolve_tracking(mode: str, device: torch.device | str) -> Tracking:
    """``auto``: sampled on CPU (the tracker is the only meter there), off on CUDA (the allocator peak is exact).
    ``off`` on CPU measures nothing; recipes cannot ask for it, benchmarks use it as the untracked baseline."""
    if mode not in (*TRACKING_MODES, "off"):
        raise ConfigError(f"memory_tracking: {mode!r} is not one of {', '.join(TRACKING_MODES)}")
    if mode == "auto":
        return "off" if torch.device(device).type == "cuda" else "sampled"
    return mode  # type: ignore[return-value]


@dataclass
class TrackingPolicy:
    """Which training steps the tracker watches (see the module docstring); the rest run untracked."""

    mode: Tracking = "sampled"
    warmup_steps: int = 2
    steps: int = 0
    tracked: int = 0
    _shapes: set[tuple[int, ...]] = field(default_factory=set)
    _phases: set[Hashable] = field(default_factory=set)
    _epoch: int = -1
    _in_epoch: int = 0
    _new_phase: bool = False

    def wants(self, shape: tuple[int, ...], epoch: int, phase: Hashable = None) -> bool:
        """Decide for the next step (call once per step, in order); ``phase`` names what the model's step does in
        this epoch (the same phase again in a later epoch allocates as before)."""
        new_shape = shape not in self._shapes
        self._shapes.add(shape)
        if epoch != self._epoch:
            self._epoch, self._in_epoch = epoch, 0
            self._new_phase = phase not in self._phases
            self._phases.add(phase)
        index, self._in_epoch = self._in_epoch, self._in_epoch + 1
        self.steps += 1
        if self.mode == "off":
            return False
        track = self.mode == "all" or (self._new_phase and index < self.warmup_steps) or new_shape
        self.tracked += track
        return track


@dataclass(frozen=True)
class MemoryReport:
    """What a trial used, with what it was measured by."""

    peak_memory_bytes: int
    source: str
    tracked_peak_bytes: int
    saved_activation_bytes: int
    cuda_peak_bytes: int | None
    device: str
    tracking: str = "all"
    tracked_steps: int = 0
    steps: int = 0


class MemoryMeter:
    """Measures one trial's peak training memory on its device, and enforces the budget.

    Use as a context manager around the whole training loop. With ``tracking="all"`` the tracker watches the whole
    block (call :meth:`step` at the start of each forward); a training loop instead wraps each step in
    :meth:`train_step`, which tracks only the steps its :class:`TrackingPolicy` picks.
    """

    def __init__(
        self, device: torch.device | str, *, budget_bytes: int | None = None, tracking: Tracking = "all"
    ) -> None:
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        self.policy = TrackingPolicy(resolve_tracking(tracking, self.device))
        self.tracker = LiveTensorTracker(self.device, budget_bytes if self.device.type == "cpu" else None)
        self._hooks = None
        self._whole_block = self.policy.mode == "all"

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            if self.budget_bytes is not None:
                total = torch.cuda.get_device_properties(self.device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, self.budget_bytes / total), self.device)
        if self._whole_block:
            self._start_tracking()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._whole_block:
            self._stop_tracking(*exc)
        if self.device.type == "cuda" and self.budget_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def _start_tracking(self) -> None:
        self._hooks = self.tracker.saved_tensors_hooks()
        self._hooks.__enter__()
        self.tracker.__enter__()

    def _stop_tracking(self, *exc: object) -> None:
        self.tracker.__exit__(*exc)
        self._hooks.__exit__(*exc)

    def register_model(self, model: torch.nn.Module) -> None:
        self.tracker.register_state([*model.parameters(), *model.buffers()])

    def register(self, *tensors: torch.Tensor) -> None:
        self.tracker.register(tensors)

    def step(self) -> None:
        self.tracker.new_step()

    @contextlib.contextmanager
    def train_step(
        self,
        shape: tuple[int, ...],
        *,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        inputs: Iterable[torch.Tensor] = (),
        phase: Hashable = None,
    ) -> Iterator[bool]:
        """One training step: tracked if the policy picks it (yields whether it did). The step's batch must be
        created inside the block; ``inputs`` are tensors made before it that a fully tracked loop would count (the
        epoch's sample order, the batch; nested lists and dicts are walked)."""
        track = self.policy.wants(tuple(shape), epoch, phase)
        if self._whole_block or not track:  # already watching the whole block, or an untracked step
            if track:
                self.step()
            yield track
            return
        self._start_tracking()
        try:
            # What untracked steps left alive: parameters (already counted), this step's gradients and the
            # optimizer state (updated in place, so counted since the step that created it; registering is a no-op).
            self.tracker.register_state([*model.parameters(), *model.buffers()])
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
            self.tracker.register([*grads, *state, *tree_flatten(list(inputs))[0]])
            del grads, state  # holding them here would keep the old gradients alive past zero_grad
            self.step()
            yield True
        finally:
            self._stop_tracking(None, None, None)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run without the tracker (evaluation: its activations are not training memory)."""
        if not self._whole_block:
            yield
            return
        from torch.utils._python_dispatch import _pop_mode_temporarily

        with _pop_mode_temporarily():
            yield

    def report(self) -> MemoryReport:
        cuda_peak = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            cuda_peak = int(torch.cuda.max_memory_allocated(self.device))
        return MemoryReport(
            peak_memory_bytes=cuda_peak if cuda_peak is not None else self.tracker.peak_bytes,
            source="cuda_allocator_peak"
            if cuda_peak is not None
            else ("none" if self.policy.mode == "off" else "live_tensor_tracker"),
            tracked_peak_bytes=self.tracker.peak_bytes,
            saved_activation_bytes=self.tracker.saved_peak_bytes,
            cuda_peak_bytes=cuda_peak,
            device=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else _cpu_name(),
            tracking=self.policy.mode,
            tracked_steps=self.policy.tracked,
            steps=self.policy.steps,
        )


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"
