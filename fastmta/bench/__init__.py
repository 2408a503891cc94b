"""The bundled benchmark harness (``fastmta bench``); see ``harness.py``."""

from fastmta.bench.harness import BenchOptions, check_loopback, run_bench
from fastmta.bench.messages import message_template
from fastmta.bench.profile import (
           BenchError,
           BenchProfile,
           expand,
           load_profile,
           profile_names,
           recipients,
)

__all__ = ["BenchError", "BenchOptions", "BenchProfile", "check_loopback", "expand",
           "load_profile", "message_template", "profile_names", "recipients", "run_bench"]
