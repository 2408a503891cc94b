"""What happened, read back out: reports, operator events, exports, metrics and
admin controls."""
