"""TLS reporting (RFC 8460): per-attempt TLS results and the daily aggregate report.

Workers append one JSON line per TLS-relevant attempt to ``<dir>/YYYY-MM-DD.jsonl``
(UTC day; ``O_APPEND`` writes of one short line are atomic between processes):
``{"ts", "domain", "policy_type", "policy", "mx", "ip", "result", "detail"}`` where
``result`` is ``success`` or an RFC 8460 result type (``validation-failure``,
``certificate-not-trusted``, ``starttls-not-supported``, ``sts-policy-fetch-error``...).
``report(dir, domain, day)`` aggregates one domain's day into the report JSON
(``fastmta tls report --domain D --day YYYY-MM-DD`` writes it).
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from pathlib import Path

__all__ = ["TlsResultLog", "report", "day_of"]


def day_of(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


class TlsResultLog:
    """Append-only per-day JSONL files of TLS results."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)

    def record(self, *, ts: float, domain: str, policy_type: str, policy: list[str],
               mx: str, ip: str, result: str, detail: str = "") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"ts": round(ts, 3), "domain": domain, "policy_type": policy_type,
                           "policy": policy, "mx": mx, "ip": ip, "result": result,
                           "detail": detail[:300]}, separators=(",", ":")) + "\n"
        fd = os.open(self.dir / f"{day_of(ts)}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o640)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self, day: str):
        path = self.dir / f"{day}.jsonl"
        if not path.exists():
            return
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a torn last line after a crash


def report(directory: str | os.PathLike, domain: str, day: str, *,
           organization: str = "fastmta", contact: str = "", report_id: str = "") -> dict:
    """The RFC 8460 aggregate report of ``domain`` for the UTC ``day`` (YYYY-MM-DD)."""
    start = datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    end = start + datetime.timedelta(days=1) - datetime.timedelta(seconds=1)
    d = domain.lower().rstrip(".")
    groups: dict[tuple[str, tuple[str, ...]], dict] = {}
    for e in TlsResultLog(directory).read(day):
        if e.get("domain") != d:
            continue
        key = (e.get("policy_type", "no-policy-found"), tuple(e.get("policy") or []))
        g = groups.setdefault(key, {"ok": 0, "fail": 0, "details": Counter()})
        if e.get("result") == "success":
            g["ok"] += 1
        else:
            g["fail"] += 1
            g["details"][(e.get("result", ""), e.get("mx", ""), e.get("ip", ""),
                          e.get("detail", ""))] += 1
    policies = []
    for (ptype, pstrings), g in sorted(groups.items()):
        pol: dict = {"policy-type": ptype, "policy-domain": d}
        if pstrings:
            pol["policy-string"] = list(pstrings)
            pol["mx-host"] = [s[4:] for s in pstrings if s.startswith("mx: ")]
        entry = {"policy": pol, "summary": {"total-successful-session-count": g["ok"],
                                            "total-failure-session-count": g["fail"]}}
        if g["details"]:
            entry["failure-details"] = [
                {"result-type": rt, "receiving-mx-hostname": mx, "receiving-ip": ip,
                 "failed-session-count": n, **({"additional-information": info}
                                               if info else {})}
                for (rt, mx, ip, info), n in sorted(g["details"].items())]
        policies.append(entry)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "end-datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "contact-info": contact,
        "report-id": report_id or f"{day}_{d}@{organization}",
        "policies": policies,
    }
