"""Choose a compiled extension or its pure-Python twin (shared by core and dkim).

``FASTMTA_NO_EXTENSIONS=1`` forces the twin; ``FASTMTA_REQUIRE_EXTENSIONS=1`` makes a
missing extension an ImportError.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def select(compiled: str, pure: ModuleType) -> tuple[ModuleType, str, str | None]:
    """Return (module, "compiled" | "pure", import error text or None) for
    ``fastmta.<compiled>`` with ``pure`` as the fallback."""
    if os.environ.get("FASTMTA_NO_EXTENSIONS") == "1":
        return pure, "pure", None
    try:
        module = importlib.import_module(f"fastmta.{compiled}")
    except ImportError as exc:  # pragma: no cover - depends on the build
        if os.environ.get("FASTMTA_REQUIRE_EXTENSIONS") == "1":
            raise ImportError(
                f"FASTMTA_REQUIRE_EXTENSIONS=1 but the compiled module fastmta.{compiled} "
                f"cannot be imported: {exc}"
            ) from exc
        return pure, "pure", str(exc)
    return module, "compiled", None


def implementations(compiled: str, pure: ModuleType) -> dict[str, ModuleType]:
    """Every importable implementation by name (for parity tests and benchmarks)."""
    impls = {"pure": pure}
    try:
        impls["compiled"] = importlib.import_module(f"fastmta.{compiled}")
    except ImportError:
        pass
    return impls
