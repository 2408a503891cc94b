"""CLI commands of the compiled core: ``fastmta classify`` (issue #2)."""

from __future__ import annotations
