"""The ``fastmta`` command line (click).

The group lives here; each concern adds its commands in its own module below, imported at
the end.  Commands are thin: the logic lives in the library so the Python API can do
everything the CLI does.
"""

from __future__ import annotations

import click

from .. import __version__
from .. import core as _core


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
from . import bench_cmds, core_cmds, delivery_cmds, engine_cmds, ops_cmds  # noqa: E402,F401
from .dkim_cmds import dkim_group  # noqa: E402,F401
from .sim_cmds import sim as _sim  # noqa: E402,F401
