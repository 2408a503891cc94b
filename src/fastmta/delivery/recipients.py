"""Streaming recipient readers: CSV (header row) and JSONL, with input line numbers.

Nothing is loaded in memory: rows are yielded one at a time.  A CSV must have a header
row with an ``email`` column (also accepted: ``e-mail``, ``email_address``, ``mail``,
``address``; case-insensitive); the other columns are personalisation fields.  Delimiter
``,`` ``;`` ``|`` or TAB is detected from the header.  JSONL: one object per line with an
``email`` key; other keys are fields (values converted to strings).  Malformed lines
(bad JSON, not an object, wrong column count) are yielded with ``error`` set, so the
analysis can list them with their line number instead of stopping.
"""

from __future__ import annotations

import csv
import io
import itertools
import operator
import os
from collections.abc import Iterator
from typing import IO

import msgspec

from ..errors import FastMTAError

EMAIL_COLUMNS = ("email", "e-mail", "email_address", "mail", "address")


class InputError(FastMTAError):
    """The recipients file cannot be read at all (no header, no email column...)."""


class Row(msgspec.Struct, array_like=True):
    """One input recipient: ``line`` is the 1-based line number where the record ends."""

    line: int
    email: str
    fields: dict[str, str]
    error: str = ""


def detect_format(path: str) -> str:
    low = path.lower()
    if low.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "csv"


def open_recipients(path: str | os.PathLike[str], fmt: str | None = None) -> RecipientReader:
    """Open a recipients file (format from the extension unless given)."""
    p = os.fspath(path)
    return RecipientReader(open(p, encoding="utf-8-sig", newline=""), fmt or detect_format(p), p)


class RecipientReader:
    """Iterate ``Row`` objects; ``columns`` (CSV) is known after construction."""

    def __init__(self, f: IO[str], fmt: str, name: str = "<input>") -> None:
        if fmt not in ("csv", "jsonl"):
            raise InputError(f"unknown recipients format {fmt!r} (csv or jsonl)")
        self._f = f
        self.fmt = fmt
        self.name = name
        self.columns: list[str] = []  # personalisation columns (CSV)
        self._email_idx = -1
        self.missing: dict[str, int] = {}
        self._reader: Iterator[list[str]] | None = None
        if fmt == "csv":
            self._open_csv()

    def _open_csv(self) -> None:
        header_line = self._f.readline()
        if not header_line.strip():
            raise InputError(f"{self.name}: empty file or missing header row (need an 'email' column)")
        delim = max(",;\t|", key=header_line.count)
        if header_line.count(delim) == 0:
            delim = ","
        rest = self._f
        reader = csv.reader(itertools.chain((header_line,), rest), delimiter=delim, strict=False)
        header = next(reader)
        names = [h.strip() for h in header]
        lowered = [h.lower() for h in names]
        for cand in EMAIL_COLUMNS:
            if cand in lowered:
                self._email_idx = lowered.index(cand)
                break
        else:
            raise InputError(
                f"{self.name}: no email column in the header {names!r} "
                f"(expected one of {', '.join(EMAIL_COLUMNS)})"
            )
        self._header = names
        self.columns = [n for i, n in enumerate(names) if i != self._email_idx]
        self._csv = reader

    def __iter__(self) -> Iterator[Row]:
        if self.fmt == "csv":
            return self._iter_csv()
        return self._iter_jsonl()

    def _iter_csv(self) -> Iterator[Row]:
        reader = self._csv
        ei = self._email_idx
        names = self._header
        ncol = len(names)
        pairs = [(i, n) for i, n in enumerate(names) if i != ei]
        for rec in reader:
            line = reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip() and ncol > 1):
                continue  # blank line
            if len(rec) != ncol:
                yield Row(line, rec[ei] if ei < len(rec) else "", {},
                          f"{len(rec)} columns, header has {ncol}")
                continue
            yield Row(line, rec[ei], {n: rec[i] for i, n in pairs})

    def rows(self, fields: list[str]) -> Iterator[tuple[int, str, tuple[str, ...], str]]:
        """Fast path: ``(line, email, values of fields in order, error)`` per record.

        A field missing from a record gives "" and is counted in ``self.missing``."""
        if self.fmt != "csv":
            for r in self._iter_jsonl():
                f = r.fields
                vals = []
                for name in fields:
                    v = f.get(name)
                    if v is None:
                        if not r.error:
                            self.missing[name] = self.missing.get(name, 0) + 1
                        v = ""
                    vals.append(v)
                yield r.line, r.email, tuple(vals), r.error
            return
        reader = self._csv
        ei = self._email_idx
        ncol = len(self._header)
        idx = [self._header.index(f) for f in fields if f in self._header]
        if len(idx) != len(fields):
            raise InputError(f"{self.name}: fields {fields} are not all columns of {self._header}")
        if len(idx) == 1:
            i0 = idx[0]

            def pick(rec: list[str]) -> tuple[str, ...]:
                return (rec[i0],)
        elif idx:
            getter = operator.itemgetter(*idx)

            def pick(rec: list[str]) -> tuple[str, ...]:
                return getter(rec)
        else:
            def pick(rec: list[str]) -> tuple[str, ...]:
                return ()
        empty: tuple[str, ...] = ()
        for rec in reader:
            n = len(rec)
            if n != ncol:
                if not rec or (n == 1 and not rec[0].strip()):
                    continue  # blank line
                yield (reader.line_num, rec[ei] if ei < n else "", empty,
                       f"{n} columns, header has {ncol}")
                continue
            yield reader.line_num, rec[ei], pick(rec), ""

    def _iter_jsonl(self) -> Iterator[Row]:
        dec = msgspec.json.Decoder()
        for line_no, text in enumerate(self._f, 1):
            if not text.strip():
                continue
            try:
                obj = dec.decode(text)
            except msgspec.DecodeError as exc:
                yield Row(line_no, "", {}, f"invalid JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield Row(line_no, "", {}, "not a JSON object")
                continue
            email = obj.pop("email", None)
            if email is None:
                for cand in EMAIL_COLUMNS[1:]:
                    if cand in obj:
                        email = obj.pop(cand)
                        break
            fields = {str(k): ("" if v is None else v if isinstance(v, str) else
                               msgspec.json.encode(v).decode()) for k, v in obj.items()}
            yield Row(line_no, email if isinstance(email, str) else "", fields)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecipientReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reader_from_text(text: str, fmt: str = "csv") -> RecipientReader:
    """A reader over an in-memory string (tests, the API)."""
    return RecipientReader(io.StringIO(text, newline=""), fmt)
