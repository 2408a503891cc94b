"""Pick the compiled core or its pure-Python twin.

``FASTMTA_NO_EXTENSIONS=1`` forces the pure twin; ``FASTMTA_REQUIRE_EXTENSIONS=1`` makes a
missing extension an ImportError (CI and benchmarks set it).  ``IMPL`` says which one is
in use: ``"compiled"`` or ``"pure"``.
"""

from __future__ import annotations

from fastmta import _core_py
from fastmta._select import implementations as _implementations
from fastmta._select import select

_impl, IMPL, IMPORT_ERROR = select("_core", _core_py)

globals().update({name: getattr(_impl, name) for name in _core_py.__all__})

__all__ = ["IMPL", "IMPORT_ERROR", *_core_py.__all__]


def implementations() -> dict:
    """Every importable implementation by name (for parity tests and benchmarks)."""
    return _implementations("_core", _core_py)
