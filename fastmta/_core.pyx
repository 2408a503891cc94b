# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled core: SMTP reply parser and bounce classifier (typed port of ``_core_py``).

Same names, same results as the pure-Python reference ``fastmta._core_py`` (the
specification; see its docstring).  What differs is how:

- ``ReplyParser.feed`` reads the bytes through the buffer protocol and frames lines with
  ``memchr``; a partial line and the lines of the current reply live in C buffers, and
  Python objects (the line texts, ``raw``, ``Reply``) are created only when a reply is
  complete.
- ``Classifier`` copies the compiled rule tables (``fastmta.classify.rules``) into C arrays.
  One pass over the reply's characters (read in place from the str, no encoding and no
  lower-casing copy) extracts the reply code and the enhanced code, and drives an
  Aho-Corasick DFA over character classes that finds every rule pattern; the patterns
  found switch on their candidate rules in a bit set, and the candidates are checked in
  rule order (command mask, code bit set, enhanced patterns, pattern sets).  Only rules
  with a ``regex`` touch the Python regex engine, and only when everything else holds.

- ``rcpt_sent`` / ``rcpt_claim`` / ``rcpt_batch`` (the spool's per-result and
  per-injected-row record work) read and write a recipient record's msgpack bytes
  directly instead of building msgspec structs.

One extension module, in several files: this one holds the cimports, C declarations and
module constants, and includes the definitions (``_core_reply.pxi``, ``_core_codes.pxi``,
``_core_classifier.pxi``, ``_core_body.pxi``, ``_core_records.pxi``).  Types: ``_core.pyi``.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

from collections import deque

from fastmta.classify import rules as _rules
from fastmta.errors import RemoteProtocolError

cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    uint32_t PyUnicode_READ(int kind, void* data, Py_ssize_t index) nogil
    object PyUnicode_FromFormat(const char* fmt, ...)

__all__ = [
    "Reply",
    "ReplyParser",
    "parse_reply",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_REPLY",
    "Classification",
    "Classifier",
    "classify",
    "load_rules",
    "default_classifier",
    "extract_codes",
    "prepare_body",
    "rcpt_sent",
    "rcpt_claim",
    "rcpt_batch",
    "csv_rows",
]

DEFAULT_MAX_LINE = 8192
DEFAULT_MAX_REPLY = 65536

cdef object _deque = deque
cdef object _RemoteProtocolError = RemoteProtocolError


# The definitions, in dependency order (``include`` pastes each file here at compile time).
include "_core_reply.pxi"        # Reply, ReplyParser, parse_reply
include "_core_codes.pxi"        # Classification, code extraction, extract_codes
include "_core_classifier.pxi"   # Classifier, default_classifier, load_rules, classify
include "_core_body.pxi"         # prepare_body (DATA framing)
include "_core_records.pxi"      # rcpt_sent, rcpt_claim, rcpt_batch (spool records as msgpack)
include "_core_rows.pxi"         # csv_rows (the CSV fast path of injection)
