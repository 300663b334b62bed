"""Entries of the feature cache on local disk: one memory-mapped ``.npy`` array per (backbone, data, split, tap).

Integrity, since several trial processes share a folder and any of them may be killed:

* the file name is the hash of the entry's key (backbone and weights digest, dataset and split, preprocessing, tap,
  dtype), and the key is stored beside it and compared on read;
* an entry is written to a temporary file, its sha256 computed, then renamed into place; its metadata (key, shape,
  checksum, build time) is written last, also by rename. An array without metadata is a half-written entry: it is
  never read, and rebuilt;
* the checksum is verified the first time a process reads an entry; a mismatch deletes the entry (rebuilt next);
* builds hold an exclusive ``fcntl`` lock on the folder, so two searches starting together compute each entry once;
* a temporary file names the process writing it: one left by a killed process (no process of that id runs on this
  machine any more) is deleted by the next build and listed by ``autoside cache ls``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from autoside.errors import AutosideError

CACHE_VERSION = 1
_VERIFIED: set[str] = set()  # entries whose checksum this process has checked


class CacheUnavailable(AutosideError):
    """The cache folder cannot be used (read-only, full, ...): the trial computes its features instead."""


def default_cache_dir() -> Path:
    """``$AUTOSIDE_CACHE_DIR``, else ``~/.cache/autoside/features`` (each node's own disk)."""
    env = os.environ.get("AUTOSIDE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "autoside" / "features"


_TMP_NAME = re.compile(r"^\.([0-9a-f]+)\.(\d+)(\.[a-z]+)?\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureStore:
    """A cache folder (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _paths(self, digest: str, suffix: str = ".npy") -> tuple[Path, Path]:
        return self.root / f"{digest}{suffix}", self.root / f"{digest}.json"

    def read(self, key: dict[str, Any]) -> np.ndarray | None:
        """The entry's array (memory-mapped, read-only), or ``None`` when it is missing, half-written or corrupt."""
        found = self.read_file(key, ".npy")
        return np.load(found[0], mmap_mode="r") if found else None

    def read_file(self, key: dict[str, Any], suffix: str) -> tuple[Path, dict[str, Any]] | None:
        """A whole, checksummed entry's file and metadata, or ``None`` (missing, half-written or corrupt)."""
        digest = key_digest(key)
        data, meta_path = self._paths(digest, suffix)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != json.loads(json.dumps(key, default=str)) or not data.is_file():
            return None
        if digest not in _VERIFIED:
            if data.stat().st_size != meta.get("bytes") or _sha256(data) != meta.get("sha256"):
                with contextlib.suppress(OSError):  # a read-only cache keeps it; it is never read either way
                    self._remove(digest)
                return None
            _VERIFIED.add(digest)
        return data, meta

    def write_file(
        self, key: dict[str, Any], suffix: str, write: Callable[[Path], None], extra: dict[str, Any]
    ) -> Path:
        """A new entry written by ``write(path)`` to a temporary file, then committed like an array (call under
        :meth:`locked`); ``extra`` joins its metadata."""
        digest = key_digest(key)
        tmp = self.root / f".{digest}.{os.getpid()}{suffix}.tmp"
        try:
            write(tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CacheUnavailable(f"feature cache {self.root}: writing failed ({exc.strerror or exc})") from None
        return PendingEntry(self, key, digest, tmp, None, suffix=suffix, extra=extra).commit_file()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive build lock on the folder (blocks until the other builder is done)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / ".build.lock", "a+")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            raise CacheUnavailable(f"feature cache {self.root}: cannot be used ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            for tmp in self.leftovers():  # under the lock: no live builder's file is among them
                tmp.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def begin(self, key: dict[str, Any], shape: tuple[int, ...], dtype: str) -> PendingEntry:
        """A new entry to fill (call under :meth:`locked`); nothing is readable before :meth:`PendingEntry.commit`."""
        digest = key_digest(key)
        tmp = self.root / f".{digest}.{os.getpid()}.tmp"
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CacheUnavailable(f"feature cache {self.root}: writing failed ({exc.strerror or exc})") from None
        return PendingEntry(self, key, digest, tmp, array)

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every complete entry, plus ``digest``; half-written ones are listed with ``incomplete``."""
        rows = []
        files = [*self.root.glob("*.npy"), *self.root.glob("*.safetensors")] if self.root.is_dir() else []
        for data in sorted(files):
            digest = data.stem
            try:
                meta = json.loads(self._paths(digest)[1].read_text())
            except (OSError, ValueError):
                meta = {"incomplete": True, "bytes": data.stat().st_size}
            rows.append({"digest": digest, **meta})
        return rows

    def leftovers(self) -> list[Path]:
        """Temporary files of builds whose process is gone (killed mid-write): never read, only taking space."""
        if not self.root.is_dir():
            return []
        found = []
        for tmp in self.root.glob(".*.tmp"):
            match = _TMP_NAME.match(tmp.name)
            if match and not _alive(int(match.group(2))):
                found.append(tmp)
        return sorted(found)

    def remove(self, digests: list[str] | None = None) -> int:
        """Delete the given entries (all, and any leftover temporary files, when ``None``); returns how many."""
        if digests is None:
            for tmp in self.root.glob(".*.tmp") if self.root.is_dir() else []:
                tmp.unlink(missing_ok=True)
            digests = [row["digest"] for row in self.entries()]
        for digest in digests:
            self._remove(digest)
        return len(digests)

    def _remove(self, digest: str) -> None:
        _VERIFIED.discard(digest)
        for path in (*self._paths(digest), self._paths(digest, ".safetensors")[0]):
            path.unlink(missing_ok=True)


class PendingEntry:
    """An entry being written: fill :attr:`array`, then :meth:`commit` (or :meth:`abort`)."""

    def __init__(
        self,
        store: FeatureStore,
        key: dict[str, Any],
        digest: str,
        tmp: Path,
        array: np.ndarray | None,
        *,
        suffix: str = ".npy",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.store, self.key, self.digest, self.tmp, self.array = store, key, digest, tmp, array
        self.suffix, self.extra = suffix, dict(extra or {})
        self.started = time.perf_counter()

    def commit(self) -> np.ndarray:
        """Checksum, rename into place, then the metadata (also by rename); returns the entry read back."""
        try:
            self.array.flush()
        except OSError as exc:
            self.abort()
            raise CacheUnavailable(f"feature cache {self.store.root}: writing failed ({exc.strerror or exc})") from None
        self.extra.update(shape=list(self.array.shape), dtype=str(self.array.dtype))
        self.array = None
        return np.load(self.commit_file(), mmap_mode="r")

    def commit_file(self) -> Path:
        """Checksum the written file, rename it into place, then its metadata (also by rename); returns its path."""
        data, meta_path = self.store._paths(self.digest, self.suffix)
        try:
            meta = {
                "key": self.key,
                **self.extra,
                "bytes": self.tmp.stat().st_size,
                "sha256": _sha256(self.tmp),
                "build_seconds": round(time.perf_counter() - self.started, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            os.replace(self.tmp, data)
            meta_tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
            meta_tmp.write_text(json.dumps(meta, indent=1, default=str))
            os.replace(meta_tmp, meta_path)
        except OSError as exc:
            self.abort()
            raise CacheUnavailable(f"feature cache {self.store.root}: writing failed ({exc.strerror or exc})") from None
        _VERIFIED.add(self.digest)
        return data

    def abort(self) -> None:
        self.array = None
        self.tmp.unlink(missing_ok=True)
