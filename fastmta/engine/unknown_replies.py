"""The worker's side of the unknown-reply loop (issue #16) and operator-rule reload.

- At start, the operator rule file (``[classify] rules_file``, else
  ``$FASTMTA_BOUNCE_RULES``) is loaded into the core's default classifier; ``check_rules``
  (called from the worker's heartbeat) reloads it when its modification time changes, so
  ``fastmta rules add`` takes effect without a restart.  A broken file is logged and the
  previous rules stay.
- ``unknown`` (a ``templates.UnknownReplies``) is given to the scheduler, which counts the
  replies only a code-only fallback rule matched; ``flush`` writes the aggregate to the
  spool's ``unknown`` sub-database in one transaction (every heartbeat, and at exit).
"""

from __future__ import annotations

import logging
import os

from fastmta import core
from fastmta.classify import rules as _rules
from fastmta.classify.templates import UnknownReplies
from fastmta.errors import ConfigError

log = logging.getLogger("fastmta.engine.worker")


def _fallbacks() -> frozenset:
    return frozenset([r.name for r in core.default_classifier().rules.rules if r.fallback]
                     + ["default"])


class UnknownReplyLoop:
    """Operator rules kept current, unknown replies aggregated (see module docstring)."""

    def __init__(self, rules_file: str = "") -> None:
        files = [rules_file] if rules_file else _rules.default_rule_files()
        self.path = files[0] if files else ""
        self.mtime = self._mtime()
        if self.path:
            try:
                core.load_rules(self.path)
            except ConfigError as exc:
                log.error("operator bounce rules not loaded: %s", exc)
        self.unknown = UnknownReplies(_fallbacks())
        self.reloads = 0

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime_ns if self.path else None
        except OSError:
            return None

    def check_rules(self) -> bool:
        """Reload the operator rule file if it changed.  True when reloaded."""
        if not self.path:
            return False
        m = self._mtime()
        if m == self.mtime:
            return False
        self.mtime = m
        try:
            core.load_rules(self.path if m is not None else [])
        except ConfigError as exc:
            log.error("operator bounce rules changed but not reloaded (previous rules "
                      "kept): %s", exc)
            return False
        self.unknown.fallback_rules = _fallbacks()
        self.reloads += 1
        log.info("operator bounce rules reloaded from %s", self.path)
        return True

    async def flush(self, writer, spool) -> int:
        """Write the aggregated unknown replies to the spool; returns templates written."""
        from fastmta.spool.unknown import record_unknown

        entries = self.unknown.take()
        if not entries:
            return 0
        return await writer.run(record_unknown, spool, entries)
