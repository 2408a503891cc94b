"""Pick the compiled core or its pure-Python twin.

``FASTMTA_NO_EXTENSIONS=1`` forces the pure twin; ``FASTMTA_REQUIRE_EXTENSIONS=1`` makes a
missing extension an ImportError (CI and benchmarks set it).  ``IMPL`` says which one is
in use: ``"compiled"`` or ``"pure"``.
"""

from __future__ import annotations

import os

from . import _core_py

_impl = _core_py
IMPL = "pure"
IMPORT_ERROR: str | None = None

if os.environ.get("FASTMTA_NO_EXTENSIONS") != "1":
    try:
        from . import _core as _compiled
    except ImportError as exc:  # pragma: no cover - depends on the build
        if os.environ.get("FASTMTA_REQUIRE_EXTENSIONS") == "1":
            raise ImportError(
                "FASTMTA_REQUIRE_EXTENSIONS=1 but the compiled core fastmta._core "
                f"cannot be imported: {exc}"
            ) from exc
        IMPORT_ERROR = str(exc)
    else:
        _impl = _compiled
        IMPL = "compiled"

globals().update({name: getattr(_impl, name) for name in _core_py.__all__})

__all__ = ["IMPL", "IMPORT_ERROR", *_core_py.__all__]


def implementations() -> dict:
    """Every importable implementation by name (for parity tests and benchmarks)."""
    impls = {"pure": _core_py}
    try:
        from . import _core as compiled
    except ImportError:
        pass
    else:
        impls["compiled"] = compiled
    return impls
