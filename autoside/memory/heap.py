"""Keep a long-lived CPU trial worker's heap from growing without bound.

A Ray trial worker runs trial after trial, each in a new thread, next to Ray's own threads, and frees hundreds of
megabytes of activations every step. With glibc's default of up to eight heaps ("arenas") per core, memory that one
trial's thread freed sits in an arena the next trial's thread may not use, fragmented. Measured on 2 CPU cores
(vit_small at 224 px, cached LoSA and DTL trials two at a time, ``benchmarks/README.md``): a worker grew from 4 to
15 GiB of resident memory during its third trial, whose live tensors never passed 1.3 GiB, until Ray's memory monitor
killed it; with ``MALLOC_ARENA_MAX=1`` in the workers' environment the same eight trials stayed under 4.6 GiB. The
price is time: threads of a worker now share one arena's lock, and the same first six trials of that benchmark took
243 s with it against 204 s without it in an earlier run (the first four slower, the next two as fast).

glibc reads the variable when a process starts, so it goes to Ray's workers through the search's ``runtime_env``
(:func:`worker_env`); setting the limit later, from inside a running worker, still let one grow to 10 GiB. Mapping
every block above 1 MiB on its own (``MALLOC_MMAP_THRESHOLD_``), the other usual remedy, also kept memory flat but
made trials 1.7-3x slower: each step's fresh pages are faulted in again. Other C libraries ignore the variable.
"""

from __future__ import annotations

import os

ARENAS = "1"


def worker_env() -> dict[str, str]:
    """Environment variables for trial worker processes; a ``MALLOC_ARENA_MAX`` the user set wins."""
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", ARENAS)}
