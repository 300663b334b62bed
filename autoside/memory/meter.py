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
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoside.errors import AutosideError
from autoside.units import format_bytes


class MemoryBudgetExceeded(AutosideError):
    """A trial crossed its memory budget; the search records it as infeasible."""

    def __init__(self, used_bytes: int, budget_bytes: int, where: str = "training") -> None:
        self.used_bytes = int(used_bytes)
        self.budget_bytes = int(budget_bytes)
        super().__init__(
            f"{where} needs at least {format_bytes(used_bytes)}, over the memory budget of {format_bytes(budget_bytes)}"
        )


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    if t.is_meta or getattr(t, "is_sparse", False):
        return None
    storage = t.untyped_storage()
    return (storage.data_ptr(), storage.nbytes())


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


@dataclass(frozen=True)
class MemoryReport:
    """What a trial used, with what it was measured by."""

    peak_memory_bytes: int
    source: str
    tracked_peak_bytes: int
    saved_activation_bytes: int
    cuda_peak_bytes: int | None
    device: str


class MemoryMeter:
    """Measures one trial's peak training memory on its device, and enforces the budget.

    Use as a context manager around the whole training loop; call :meth:`step` at the start of each forward.
    """

    def __init__(self, device: torch.device | str, *, budget_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        self.tracker = LiveTensorTracker(self.device, budget_bytes if self.device.type == "cpu" else None)
        self._hooks = None
        self._old_fraction: float | None = None

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            if self.budget_bytes is not None:
                total = torch.cuda.get_device_properties(self.device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, self.budget_bytes / total), self.device)
        self._hooks = self.tracker.saved_tensors_hooks()
        self._hooks.__enter__()
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracker.__exit__(*exc)
        self._hooks.__exit__(*exc)
        if self.device.type == "cuda" and self.budget_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def register_model(self, model: torch.nn.Module) -> None:
        self.tracker.register_state([*model.parameters(), *model.buffers()])

    def register(self, *tensors: torch.Tensor) -> None:
        self.tracker.register(tensors)

    def step(self) -> None:
        self.tracker.new_step()

    def report(self) -> MemoryReport:
        cuda_peak = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            cuda_peak = int(torch.cuda.max_memory_allocated(self.device))
        return MemoryReport(
            peak_memory_bytes=cuda_peak if cuda_peak is not None else self.tracker.peak_bytes,
            source="cuda_allocator_peak" if cuda_peak is not None else "live_tensor_tracker",
            tracked_peak_bytes=self.tracker.peak_bytes,
            saved_activation_bytes=self.tracker.saved_peak_bytes,
            cuda_peak_bytes=cuda_peak,
            device=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else _cpu_name(),
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
