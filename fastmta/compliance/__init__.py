"""Sender compliance (docs/compliance.md): pre-flight checks of a delivery against what
Gmail and Yahoo require of bulk senders, and the guards that pause a send."""

from fastmta.compliance.facts import CODES, LEVELS, CheckResult, Facts, Lookup

__all__ = ["CODES", "LEVELS", "CheckResult", "Facts", "Lookup"]
