"""Shared fixtures.

``impl``: parametrized over every importable core implementation (compiled and pure), so
each core test runs on both and parity is checked case by case.
"""

from __future__ import annotations

import os

import pytest

from fastmta import core


def _impl_params():
    impls = core.implementations()
    if os.environ.get("FASTMTA_NO_EXTENSIONS") == "1":
        impls = {"pure": impls["pure"]}
    elif os.environ.get("FASTMTA_REQUIRE_EXTENSIONS") == "1" and "compiled" not in impls:
        raise RuntimeError("FASTMTA_REQUIRE_EXTENSIONS=1 but the compiled core is missing")
    return [pytest.param(mod, id=name) for name, mod in impls.items()]


@pytest.fixture(params=_impl_params())
def impl(request):
    """One core implementation module (``fastmta._core`` or ``fastmta._core_py``)."""
    return request.param
