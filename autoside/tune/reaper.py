"""Stop what a search's local Ray cluster left behind when its driver is killed.

A local search starts Ray inside the driver process. Ray ties its GCS server and raylet to the driver's life, but the
agents the raylet starts (``DashboardAgent``, ``RuntimeEnvAgent``) outlive a driver killed with SIGKILL, each holding
ports and memory until someone stops them by hand. :func:`watch_local_cluster` starts a small watcher in a session of
its own: while the driver lives it keeps the list of the cluster's processes (Ray's own processes and their
descendants, each with its start time, so a reused pid is never hit); once the driver is gone, or the cluster was shut
down, it stops the ones still alive (SIGTERM, then SIGKILL) and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0


def watch_local_cluster() -> subprocess.Popen | None:
    """Start the watcher for the Ray cluster this process started (None when it started none)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is None:
        return None
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process is not None]
    return subprocess.Popen(
        [sys.executable, "-m", "autoside.tune.reaper", str(os.getpid()), *map(str, roots)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _processes() -> dict[int, list[str]]:
    return {int(e.name): f for e in Path("/proc").iterdir() if e.name.isdigit() and (f := _stat(e.name)) is not None}


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them, as /proc shows them now."""
    parents = {pid: int(fields[1]) for pid, fields in _processes().items()}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def process_group(pgid: int) -> list[int]:
    """The live processes of a process group (zombies hold nothing and are left to their reaper)."""
    return [pid for pid, fields in _processes().items() if fields[0] != "Z" and int(fields[2]) == pgid]


def _alive(tracked: dict[int, int]) -> dict[int, int]:
    return {pid: start for pid, start in tracked.items() if _start_time(pid) == start}


def watch(driver: int, roots: set[int]) -> None:
    driver_start = _start_time(driver)
    tracked = {pid: start for pid in roots if (start := _start_time(pid)) is not None}
    ray_processes = dict(tracked)
    while _start_time(driver) == driver_start and _alive(ray_processes):
        for pid in descendants(roots):
            start = _start_time(pid)
            if start is not None:
                tracked.setdefault(pid, start)
        time.sleep(POLL_S)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        left = _alive(tracked)
        for pid in left:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while _alive(left) and time.monotonic() < deadline:
            time.sleep(0.2)


if __name__ == "__main__":
    watch(int(sys.argv[1]), {int(p) for p in sys.argv[2:]})
