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


@command("backbones", "list backbones whose pretrained weights load offline")(_no_args)
def _backbones(args: argparse.Namespace) -> int:
    from autoside.backbones import offline_weights

    rows = {name: s.description for name, s in offline_weights().items()}
    print(json.dumps(rows, indent=2) if args.json else "\n".join(f"{k:24s} {v}" for k, v in rows.items()))
    if not args.json:
        print("any other timm model name works with weights: random, backbone.checkpoint=PATH or a cached download")
    return 0


@command("sidenets", "list registered side-network families and presets")(_no_args)
def _sidenets(args: argparse.Namespace) -> int:
    from autoside.sidenets import list_families, list_sidenets

    families, presets = list_families(), [n for n in list_sidenets() if n not in list_families()]
    if args.json:
        print(json.dumps({"families": families, "presets": presets}, indent=2))
    else:
        print("families: " + ", ".join(families))
        print("presets:  " + ", ".join(presets))
    return 0
