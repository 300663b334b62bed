"""The table of ``autoside`` subcommands: each command module registers itself here with :func:`command`, and
:mod:`autoside.cli.main` builds the parser from it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``fn(args) -> exit code`` as a subcommand; ``configure`` adds its arguments."""

    def wrap(configure: Callable[[argparse.ArgumentParser], None]):
        def register(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (help, configure, run)
            return run

        return register

    return wrap
