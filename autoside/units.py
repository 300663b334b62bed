"""Byte sizes as users write them (``4GiB``, ``512 MB``) and as we print them."""

from __future__ import annotations

import re

from autoside.errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: str | int | float | None, *, field: str = "memory_budget") -> int | None:
    """Read a size such as ``4GiB``, ``6 GB``, ``512MiB`` or a plain number of bytes; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a size such as 4GiB, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ConfigError(f"{field}: a size must be positive, got {value!r}")
        return int(value)
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(
            f"{field}: cannot read {value!r} as a size; write a number with a unit of B, KB, MB, GB, KiB, MiB, GiB "
            f"(e.g. 4GiB, 512MiB, 6GB) or a number of bytes"
        )
    size = float(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise ConfigError(f"{field}: a size must be positive, got {value!r}")
    return int(size)


def format_bytes(n: float | None) -> str:
    """Binary units with three significant digits, e.g. ``1.53 GiB``; 1000-1023 of a unit are shown in the next one
    (``0.986 GiB``), since three digits cannot hold four."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < (1024 if unit == "B" else 1000) or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
