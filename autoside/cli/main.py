"""The ``autoside`` command: a thin layer over the Python API.

Errors meant for the user (:class:`~autoside.errors.AutosideError`) print one line and exit non-zero (2 for usage
and config errors, like argparse); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Each command module registers its subcommands on import; the order here is the order of ``autoside --help``.
# isort: off
from autoside.cli import train, catalog, pretrain, tune, export, cache  # noqa: F401

# isort: on
from autoside.cli.registry import COMMANDS
from autoside.errors import AutosideError

STACK = ("torch", "torchvision", "timm", "ray", "optuna", "mlflow", "torch-pruning", "safetensors")


def version_line() -> str:
    """autoside's version and the installed versions of the stack it drives (read from package metadata, so
    nothing heavy is imported): what a bug report needs."""
    import platform
    from importlib import metadata

    import autoside

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    stack = ", ".join(f"{name} {installed(name)}" for name in STACK)
    return f"autoside {autoside.__version__} ({stack}; Python {platform.python_version()})"


class _Version(argparse.Action):
    """Like argparse's ``version`` action, but on one unwrapped line and computed only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoside", description="Search side networks for frozen vision backbones.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the versions of autoside and its stack")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a `*` positional before the options that follow it, so `cache rm --all D1` leaves D1 over; a
    # command that names such a positional (`trailing`) gets the words left over, anything else is refused as before.
    trailing = getattr(args, "trailing", None)
    if extra and trailing and not any(word.startswith("-") for word in extra):
        setattr(args, trailing, [*getattr(args, trailing), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except AutosideError as exc:
        print(f"autoside: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autoside: interrupted", file=sys.stderr)
        return 130
