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
import re
from collections.abc import Callable, Iterator
from typing import IO

import msgspec

from fastmta.errors import FastMTAError

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
    try:
        # undecodable bytes become lone surrogates, found per line (exact line number)
        f = open(p, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
    except FileNotFoundError:
        raise InputError(f"{p}: no such recipients file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a recipients file") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied (cannot read the recipients file)") from None
    return RecipientReader(_Utf8Text(f, p), fmt or detect_format(p), p)


class _Utf8Text:
    """A text file (opened with ``surrogateescape``) whose lines that are not UTF-8 raise
    an ``InputError`` naming the line."""

    def __init__(self, f: IO[str], name: str) -> None:
        self._f = f
        self._name = name
        self._lines = 0

    def _check(self, line: str) -> str:
        self._lines += 1
        if not line.isascii():
            m = _SURROGATE.search(line)
            if m is not None:
                byte = ord(m.group()) - 0xDC00
                raise InputError(f"{self._name}: line {self._lines} is not UTF-8 text "
                                 f"(byte 0x{byte:02x}); save the file as UTF-8")
        return line

    def readline(self) -> str:
        return self._check(self._f.readline())

    def __iter__(self) -> _Utf8Text:
        return self

    def __next__(self) -> str:
        return self._check(next(self._f))

    def close(self) -> None:
        self._f.close()

    def __getattr__(self, name: str):
        return getattr(self._f, name)


_SURROGATE = re.compile("[\udc80-\udcff]")


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
        # the records are read from the file itself, not through _Utf8Text (a Python call
        # per line): each record is checked for undecodable bytes instead (``_utf8``)
        rest = self._f._f if isinstance(self._f, _Utf8Text) else self._f
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
        self._delim = delim
        self.columns = [n for i, n in enumerate(names) if i != self._email_idx]
        self._ncol = len(names)
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
        last = reader.line_num
        for rec in reader:
            line = reader.line_num
            first, last = last + 1, line
            if not "".join(rec).isascii():
                self._utf8(first, rec)
            if not rec or (len(rec) == 1 and not rec[0].strip() and ncol > 1):
                continue  # blank line
            if len(rec) != ncol:
                self._unterminated(first, line, rec)
            elif line > first:
                self._swallowed(first, line, rec)
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
        pick = self._picker(fields)
        last = reader.line_num
        for rec in reader:
            line = reader.line_num
            if len(rec) == self._ncol and line == last + 1 and "".join(rec).isascii():
                last = line
                yield line, rec[self._email_idx], pick(rec), ""
                continue
            row = self.record(last + 1, line, rec, pick)
            last = line
            if row is not None:
                yield row

    def csv_columns(self, fields: list[str]) -> tuple[int, int, tuple[int, ...]]:
        """(column count, index of the email column, indexes of ``fields``) of a CSV."""
        idx = [self._header.index(f) for f in fields if f in self._header]
        if len(idx) != len(fields):
            raise InputError(f"{self.name}: fields {fields} are not all columns of {self._header}")
        return self._ncol, self._email_idx, tuple(idx)

    def record(self, first: int, line: int, rec: list[str],
               pick: Callable[[list[str]], tuple[str, ...]]
               ) -> tuple[int, str, tuple[str, ...], str] | None:
        """One CSV record read from lines ``first``-``line``, fully checked: ``(line,
        email, picked values, error)``, None for a blank line; raises ``InputError``
        for bytes that are not UTF-8 and for a quote never closed."""
        if not "".join(rec).isascii():
            self._utf8(first, rec)
        n = len(rec)
        ncol = self._ncol
        ei = self._email_idx
        if n != ncol:
            if not rec or (n == 1 and not rec[0].strip()):
                return None  # blank line
            self._unterminated(first, line, rec)
            return line, rec[ei] if ei < n else "", (), f"{n} columns, header has {ncol}"
        if line > first:
            self._swallowed(first, line, rec)
        return line, rec[ei], pick(rec), ""

    def _utf8(self, first: int, rec: list[str]) -> None:
        """Raise if a field of the record read from line ``first`` on holds a byte that
        was not UTF-8 (a lone surrogate), naming its physical line."""
        text = "\x00".join(rec)
        m = _SURROGATE.search(text)
        if m is None:
            return
        before = text[:m.start()]  # quoted fields keep their line breaks
        line = first + before.count("\n") + before.count("\r") - before.count("\r\n")
        byte = ord(m.group()) - 0xDC00
        raise InputError(f"{self.name}: line {line} is not UTF-8 text "
                         f"(byte 0x{byte:02x}); save the file as UTF-8")

    def _picker(self, fields: list[str]) -> Callable[[list[str]], tuple[str, ...]]:
        idx = self.csv_columns(fields)[2]
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
        return pick

    def _swallowed(self, first: int, last: int, rec: list[str]) -> None:
        """A well-formed record over several lines is legal CSV (a quoted value with line
        breaks) unless the value holds lines that look like recipients: then a quote
        was left open and swallowed them."""
        delim = self._delim
        for f in rec:
            if "\n" in f and any("@" in ln and delim in ln for ln in f.splitlines()[1:]):
                raise InputError(
                    f"{self.name}: line {first}: a quoted field is never closed, so lines "
                    f"{first}-{last} (recipients among them) were read as one record; fix "
                    f"the quote (\") on line {first}")

    def _unterminated(self, first: int, last: int, rec: list[str]) -> None:
        """A malformed record that spans lines: an opening quote never closed swallowed
        the lines after it.  Refuse the file instead of dropping those recipients."""
        if last > first or any("\n" in f or "\r" in f for f in rec):
            raise InputError(
                f"{self.name}: line {first}: a quoted field is never closed, so lines "
                f"{first}-{last} were read as one record; fix the quote (\") on line {first}")

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
