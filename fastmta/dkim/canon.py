"""Which canonicalisation implementation runs: the compiled ``fastmta.dkim._dkim`` or
its pure twin ``fastmta.dkim._dkim_py`` (forced by ``FASTMTA_NO_EXTENSIONS=1``), like
``fastmta.core``.  The signer takes its header parsing and canonicalisation from here.
"""

from __future__ import annotations

from fastmta._select import implementations as _implementations
from fastmta._select import select
from fastmta.dkim import _dkim_py

impl, IMPL, IMPORT_ERROR = select("dkim._dkim", _dkim_py)
parse_headers = impl.parse_headers
relaxed_header = impl.relaxed_header
signed_headers = impl.signed_headers
body_relaxed = impl.body_relaxed
body_simple = impl.body_simple


def implementations() -> dict:
    """Every importable canonicalisation implementation by name (tests, benchmarks)."""
    return _implementations("dkim._dkim", _dkim_py)
