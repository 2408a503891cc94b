"""Reaching the destination: the sans-IO SMTP client and its asyncio transport."""
