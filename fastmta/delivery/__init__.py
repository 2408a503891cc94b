"""The delivery model: recipients x template -> analysis -> injection into the spool.

- ``open_recipients(path)``: streaming CSV/JSONL reader with line numbers.
- ``Template(bytes)`` / ``render(template, fields)``: header-safe ``{{field}}`` rendering.
- ``check_address(addr)``: syntax, normalisation, SMTPUTF8 detection.
- ``analyze(...)`` and ``inject(spool, ...)``: exclusions with reasons, warnings.
"""

from fastmta.delivery.addresses import check_address, domain_shard, has_control
from fastmta.delivery.analysis import (
    REASON_LABELS,
    REASONS,
    Analysis,
    Exclusion,
    analyze,
    rows_from,
    template_warnings,
)
from fastmta.delivery.injection import inject
from fastmta.delivery.recipients import (
    InputError,
    RecipientReader,
    Row,
    open_recipients,
    reader_from_text,
)
from fastmta.delivery.template import (
    HeaderInjectionError,
    Template,
    TemplateError,
    encode_header_value,
    render,
)

__all__ = [
    "REASONS",
    "REASON_LABELS",
    "Analysis",
    "Exclusion",
    "HeaderInjectionError",
    "InputError",
    "RecipientReader",
    "Row",
    "Template",
    "TemplateError",
    "analyze",
    "check_address",
    "domain_shard",
    "encode_header_value",
    "has_control",
    "inject",
    "open_recipients",
    "reader_from_text",
    "render",
    "rows_from",
    "template_warnings",
]
