"""Asynchronous feedback (issue 15, docs/feedback.md): signed VERP tokens, parsing of
bounce mail / ARF complaints / automatic replies, the inbound listener and ingest, and
their effects on recipients (``apply``)."""
