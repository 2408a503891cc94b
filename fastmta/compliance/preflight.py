"""The pre-flight of a delivery: gather the facts, run the checks, decide.

``run_preflight(cfg, template, mail_from)`` -> findings; ``blocking(findings)`` -> the
errors that stop ``fastmta send`` unless ``--force`` (``[compliance] preflight =
"enforce"``; ``warn`` reports without blocking; ``off`` skips every check).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastmta.compliance.checks import evaluate
from fastmta.compliance.facts import CheckResult
from fastmta.compliance.gather import DnsLookups, gather_facts
from fastmta.errors import FastMTAError

if TYPE_CHECKING:  # pragma: no cover
    from fastmta.config import Config
    from fastmta.delivery.template import Template

__all__ = ["run_preflight", "arun_preflight", "blocking", "format_findings", "PreflightError",
           "to_json"]


class PreflightError(FastMTAError):
    """The pre-flight found errors and the send was not forced."""


def run_preflight(cfg: Config, template: Template, mail_from: str = "", *,
                  lookups: DnsLookups | None = None) -> list[CheckResult]:
    """The findings of every check (blocking DNS: see ``arun_preflight`` in a loop)."""
    if cfg.compliance.preflight == "off":
        return []
    return evaluate(gather_facts(cfg, template, mail_from, lookups=lookups))


async def arun_preflight(cfg: Config, template: Template, mail_from: str = "") -> list[CheckResult]:
    """``run_preflight`` in a thread, for callers whose loop serves the DNS (the demo)."""
    return await asyncio.to_thread(run_preflight, cfg, template, mail_from)


def blocking(findings: list[CheckResult], cfg: Config, force: bool = False) -> list[CheckResult]:
    """The errors that stop the send (none when forced or ``preflight`` is not enforce)."""
    if force or cfg.compliance.preflight != "enforce":
        return []
    return [f for f in findings if f.level == "error"]


def format_findings(findings: list[CheckResult]) -> list[str]:
    """One line per finding: ``error   code: detail``."""
    return [f"{f.level:<7} {f.code}: {f.detail}" for f in findings]


def to_json(findings: list[CheckResult]) -> list[dict[str, str]]:
    return [{"code": f.code, "level": f.level, "detail": f.detail} for f in findings]


def refusal(errors: list[CheckResult]) -> str:
    """The message ``fastmta send`` exits with when errors block it."""
    n = len(errors)
    lines = [f"pre-flight: {n} compliance {'error blocks' if n == 1 else 'errors block'} this send "
             "(fix them, or use --force to send anyway):"]
    lines += ["  " + line for line in format_findings(errors)]
    return "\n".join(lines)
