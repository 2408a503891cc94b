"""fastmta's HTTP API and live dashboard (Starlette + uvicorn, msgspec bodies).

``create_app(Context(...))`` is the ASGI app; ``fastmta.http.server`` runs it
(``fastmta serve``, ``fastmta run --http``, ``fastmta demo --dashboard``).  Every route
goes through the same library calls as the CLI: ``fastmta.api.WorkerPool``,
``fastmta.ops.admin``, ``fastmta.ops.report``, ``fastmta.ops.events``.
"""

from fastmta.http.app import create_app
from fastmta.http.context import Context

__all__ = ["Context", "create_app"]
