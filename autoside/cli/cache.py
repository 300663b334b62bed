"""``autoside cache ls|rm``: the feature cache of this machine (see :mod:`autoside.cache`)."""

from __future__ import annotations

import argparse
import json

from autoside.cli.registry import command


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--no-cache``, shared by ``train`` and ``search``."""
    p.add_argument(
        "--cache-dir", help="feature cache folder (default $AUTOSIDE_CACHE_DIR or ~/.cache/autoside/features)"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="compute backbone features in every trial (no feature cache)"
    )


def cache_overrides(args: argparse.Namespace) -> list[str]:
    return [
        *(["feature_cache=false"] if args.no_cache else []),
        *([f"cache_dir={args.cache_dir}"] if args.cache_dir else []),
    ]


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["ls", "rm"], help="ls: list the entries; rm: delete entries (or --all)")
    p.add_argument("digests", nargs="*", help="entries to delete (the DIGEST column of ls)")
    p.add_argument("--all", action="store_true", help="rm: delete every entry and any half-written file")
    p.add_argument("--cache-dir", help="the cache folder (default $AUTOSIDE_CACHE_DIR or ~/.cache/autoside/features)")
    p.add_argument("--json", action="store_true", help="ls: print the entries as JSON")
    p.set_defaults(trailing="digests")  # `rm --cache-dir DIR D1 D2`: digests after an option (autoside.cli.main)


@command("cache", "list or delete the stored backbone features that searches share")(_cache_args)
def _cache(args: argparse.Namespace) -> int:
    from autoside.cache import FeatureStore
    from autoside.errors import ConfigError
    from autoside.units import format_bytes

    store = FeatureStore(args.cache_dir)
    if store.root.exists() and not store.root.is_dir():
        raise ConfigError(f"--cache-dir {store.root}: is a file, not a cache folder")
    if args.action == "ls" and (args.digests or args.all):
        raise ConfigError("cache ls: takes no DIGEST or --all (those are for cache rm)")
    if not store.root.exists():
        print(f"{store.root}: no such folder (nothing cached there yet)")
        return 0
    leftovers = store.leftovers()
    if args.action == "rm":
        if bool(args.digests) == args.all:
            raise ConfigError("cache rm: give the DIGESTs to delete, or --all (not both)")
        known = {row["digest"] for row in store.entries()}
        unknown = [d for d in args.digests if d not in known]
        if unknown:
            raise ConfigError(f"cache rm: no entry {unknown[0]!r} in {store.root} (see autoside cache ls)")
        removed = store.remove(None if args.all else args.digests)
        extra = f" and {len(leftovers)} file(s) of interrupted builds" if args.all and leftovers else ""
        print(f"removed {removed} entries{extra} from {store.root}")
        return 0
    rows = store.entries()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{store.root}: {len(rows)} entries, {format_bytes(sum(r.get('bytes', 0) for r in rows))}")
    for row in rows:
        key = row.get("key", {})
        if row.get("incomplete"):
            what = "half-written (rebuilt on next use)"
        elif key.get("record"):
            what = f"{key['backbone']['name']} weights record ({row['tensors']} tensors, {key['backbone']['weights']})"
        else:
            what = (
                f"{key['backbone']['name']} {key['data']['name']}/{key['split']} {key['tap']} {row['dtype']} "
                f"{tuple(row['shape'])} built in {row['build_seconds']:.1f} s"
            )
        print(f"{row['digest']}  {format_bytes(row.get('bytes', 0)):>10}  {what}")
    if leftovers:
        size = format_bytes(sum(p.stat().st_size for p in leftovers))
        print(f"{len(leftovers)} file(s) of interrupted builds, {size}: deleted by the next build or cache rm --all")
    return 0
