"""``autoside datasets``, ``backbones`` and ``sidenets``: what works offline and what is registered."""

from __future__ import annotations

import argparse
import json

from autoside.cli.registry import command


def _no_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


@command("datasets", "list datasets that work offline")(_no_args)
def _datasets(args: argparse.Namespace) -> int:
    from autoside.data import list_datasets

    rows = {name: info.description for name, info in list_datasets().items()}
    print(json.dumps(rows, indent=2) if args.json else "\n".join(f"{k:14s} {v}" for k, v in rows.items()))
    return 0


def _pattern(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter on the names, e.g. 'dtl*' (as timm)")
    _no_args(p)


@command("backbones", "list backbones whose pretrained weights load offline")(_pattern)
def _backbones(args: argparse.Namespace) -> int:
    from autoside.backbones import list_backbones, offline_weights

    weights = offline_weights()
    rows = {name: weights[name].description for name in list_backbones(args.pattern)}
    print(json.dumps(rows, indent=2) if args.json else "\n".join(f"{k:24s} {v}" for k, v in rows.items()))
    if not args.json:
        print("any other timm model name works with weights: random, backbone.checkpoint=PATH or a cached download")
    return 0


@command("sidenets", "list registered side-network families and presets")(_pattern)
def _sidenets(args: argparse.Namespace) -> int:
    from autoside.sidenets import describe_sidenet, list_families, list_sidenets

    names, family_names = list_sidenets(args.pattern), set(list_families())
    families = {n: describe_sidenet(n)[1] for n in names if n in family_names}
    presets = {n: dict(zip(("family", "description"), describe_sidenet(n))) for n in names if n not in families}
    if args.json:
        print(json.dumps({"families": families, "presets": presets}, indent=2))
        return 0
    width = max(map(len, names), default=0)
    print("families:")
    print("\n".join(f"  {n:{width}s}  {d}" for n, d in families.items()) or "  (none matches)")
    print("presets (family: description):")
    print(
        "\n".join(f"  {n:{width}s}  {p['family']}: {p['description']}" for n, p in presets.items())
        or "  (none matches)"
    )
    return 0
