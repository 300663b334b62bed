"""With the environment trial workers start with (``autoside.memory.heap.worker_env``), a worker's threads share one
heap, so what one trial freed serves the next instead of piling up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/statm").exists(), reason="glibc on Linux"
)

# Three "trials", each in a new thread that stays alive (as a Ray worker's runner threads may), each allocating and
# freeing 200 MiB of step-sized blocks and leaving one small block behind.
SCRIPT = """
import threading
import numpy as np
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
base = rss()
hold = threading.Event()
pins = []
def trial(done):
    blocks = [np.ones(64 << 10, dtype=np.uint8) for _ in range(3200)]
    pins.append(np.ones(1 << 10, dtype=np.uint8))
    del blocks
    done.set()
    hold.wait()
for _ in range(3):
    done = threading.Event()
    threading.Thread(target=trial, args=(done,), daemon=True).start()
    done.wait()
print((rss() - base) >> 20)
"""


def _retained_mib(extra: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip())


def test_trial_threads_reuse_what_earlier_trials_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoside.memory.heap import worker_env

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    plain, bound = _retained_mib({}), _retained_mib(worker_env())
    assert plain > 300  # each trial's thread got a heap of its own and kept what it freed
    assert bound < 150, (plain, bound)  # one heap: the second and third trials reuse the first one's blocks
