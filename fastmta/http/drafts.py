"""Deliveries created over HTTP: the upload is streamed to a draft on disk, analysed, and
injected only on confirm (like ``fastmta send`` asks before sending).

A draft is a directory ``<spool>/http-drafts/<id>/`` with ``recipients.csv|jsonl``,
``message.eml`` and ``draft.json``; it is built under a temporary name and renamed when
complete, so a refused or interrupted upload leaves nothing behind.  Confirming injects
it with ``fastmta.engine.entry.inject_file`` (the path ``fastmta send`` uses) and removes
the draft, leaving ``<id>.done`` (the delivery id) so a repeated confirm is answered.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import msgspec

from fastmta.delivery import Template, analyze, open_recipients
from fastmta.delivery.analysis import Exclusion
from fastmta.delivery.injection import check_delivery_inputs
from fastmta.dkim.signers import key_check
from fastmta.http.errors import ApiError

#: exclusions that mean the input itself is wrong (refused unless on_invalid=exclude)
INVALID_REASONS = frozenset({"malformed_line", "unqualified_address", "address_not_specified",
                             "invalid_field"})
MAX_LISTED = 100  # exclusions listed in the analysis answer
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class Drafts:
    """The draft directory of one spool."""

    def __init__(self, spool_path: str) -> None:
        self.root = Path(spool_path) / "http-drafts"

    def new_dir(self) -> tuple[str, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        did = secrets.token_urlsafe(12)
        tmp = self.root / f".{did}.tmp"
        tmp.mkdir()
        return did, tmp

    def publish(self, draft_id: str, tmp: Path, meta: dict[str, Any]) -> None:
        (tmp / "draft.json").write_text(json.dumps(meta))
        os.replace(tmp, self.root / draft_id)

    def discard_tmp(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def path(self, draft_id: str) -> Path:
        if not _ID.match(draft_id):
            raise ApiError(404, "not_found", f"no draft {draft_id!r}")
        return self.root / draft_id

    def load(self, draft_id: str) -> dict[str, Any]:
        p = self.path(draft_id)
        done = self.root / f"{draft_id}.done"
        if done.exists():
            raise ApiError(409, "already_confirmed", f"draft {draft_id} was confirmed",
                           delivery_id=int(done.read_text() or 0))
        try:
            return json.loads((p / "draft.json").read_text())
        except FileNotFoundError:
            raise ApiError(404, "not_found", f"no draft {draft_id!r}") from None

    def list(self) -> list[dict[str, Any]]:
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                try:
                    out.append(json.loads((p / "draft.json").read_text()))
                except (OSError, ValueError):
                    continue
        return out

    def finish(self, draft_id: str, delivery_id: int) -> None:
        (self.root / f"{draft_id}.done").write_text(str(delivery_id))
        shutil.rmtree(self.path(draft_id), ignore_errors=True)

    def delete(self, draft_id: str) -> None:
        self.load(draft_id)
        shutil.rmtree(self.path(draft_id), ignore_errors=True)


def analyse_draft(spool, cfg, rcpt_path: Path, fmt: str, message: bytes, *, mail_from: str,
                  validity_s: float | None, on_invalid: str) -> dict[str, Any]:
    """Analyse an uploaded draft (raises ``ApiError`` 422 for invalid input, with line
    numbers).  Returns the analysis as a dict with the first exclusions listed."""
    _v, _t, _from = check_delivery_inputs(message, mail_from=mail_from,
                                          validity_s=validity_s, cfg=cfg.delivery)
    listed: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []

    def excluded(x: Exclusion) -> None:
        d = {"line": x.line, "email": x.email, "reason": x.reason, "detail": x.detail}
        if x.reason in INVALID_REASONS and len(invalid) < MAX_LISTED:
            invalid.append(d)
        if len(listed) < MAX_LISTED:
            listed.append(d)

    reader = open_recipients(rcpt_path, fmt)
    try:
        a = analyze(reader, Template(message), mail_from=mail_from, cfg=cfg.delivery,
                    quarantine=spool.precheck, on_excluded=excluded,
                    dkim_has_key=key_check(cfg.dkim))
    finally:
        reader.close()
    out = msgspec.to_builtins(a)
    out.pop("delivery_id", None)
    out["exclusions"] = listed
    bad = sum(a.excluded.get(r, 0) for r in INVALID_REASONS)
    if bad and on_invalid != "exclude":
        first = invalid[0]
        raise ApiError(422, "invalid_recipients",
                       f"{bad} invalid recipient line(s); first at line {first['line']}: "
                       f"{first['reason']} {first['detail']}".strip()
                       + " (nothing was created; on_invalid=exclude skips them)",
                       line=first["line"], count=bad, errors=invalid)
    if a.to_deliver == 0:
        raise ApiError(422, "nothing_to_deliver", "no recipient left to deliver after "
                       "the exclusions (nothing was created)", analysis=out)
    return out
