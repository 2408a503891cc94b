"""The ``fastmta`` command line (click).

The group lives here; each concern adds its commands in its own module below, imported at
the end.  Commands are thin: the logic lives in the library so the Python API can do
everything the CLI does.
"""

from __future__ import annotations

import click

from fastmta import __version__
from fastmta import core as _core


def _version_text() -> str:
    text = f"fastmta {__version__} (core: {_core.IMPL})"
    if _core.IMPORT_ERROR:
        text += f"; compiled core unavailable: {_core.IMPORT_ERROR}"
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(message=_version_text(), version=__version__)
def main() -> None:
    """fastmta: outbound mail transfer agent for bulk email campaigns."""


@main.command()
def info() -> None:
    """Show the version and which core implementation (compiled or pure) is in use."""
    click.echo(_version_text())


# Command modules register themselves on ``main``; keep one module per concern.
from fastmta.cli import (  # noqa: E402,F401
    bench,
    classify,
    cluster,
    delivery,
    dkim,
    egress,
    http,
    inbound,
    ops,
    rules,
    send,
    sim,
    tls,
)
