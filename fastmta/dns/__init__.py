"""Name resolution: MX, A and AAAA lookups with caching (dnspython)."""
