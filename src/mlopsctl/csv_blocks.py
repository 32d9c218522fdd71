"""A CSV file as blocks of whole records, read a bounded number of bytes at a time.

Batch predict hands each block to Arrow's CSV parser, so its memory follows the block size, not the file size.
A block is cut only between records, never inside a quoted field, however the file quotes (RFC 4180 quoting,
quotes inside unquoted fields, "" pairs, line ends inside quotes, LF, CRLF or CR line ends).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from mlopsctl.data import SNIFF_BYTES, UTF8_BOM
from mlopsctl.errors import InvalidInputError

MAX_RECORD_BYTES = 64 << 20  # a longer record is an unclosed quote, not data


def record_blocks(path: Path, size: int, delimiter: str) -> Iterator[tuple[bytes, bytes]]:
    """(header record, block of whole records) pairs, read ``size`` bytes at a time and split only between
    records, never inside a quoted field, so peak memory is one block however large the file is (Arrow's
    streaming reader reads far ahead). A UTF-8 byte-order mark and blank lines before the header are dropped;
    lines end in \\n or \\r\\n, or in \\r alone when the header's does (old Mac exports)."""
    sep = delimiter.encode()[0]
    with open(path, "rb") as fh:
        if fh.read(len(UTF8_BOM)) != UTF8_BOM:
            fh.seek(0)
        start = fh.tell()
        line_end = _line_end(fh.read(SNIFF_BYTES), sep)
        fh.seek(start)
        header, carry = None, b""
        while True:
            data = fh.read(size)
            buf = carry + data
            if not data:
                if _record_end(buf + line_end, sep, line_end) != len(buf) + 1:
                    raise InvalidInputError(f"{path} ends inside a quoted field (a \" that is never closed); fix the file.")
                if header is not None and buf.strip():
                    yield header, buf
                return
            cut = _record_end(buf, sep, line_end)
            if cut == -1:
                if len(buf) > MAX_RECORD_BYTES:
                    raise InvalidInputError(
                        f"{path} has a record longer than {MAX_RECORD_BYTES >> 20} MiB, most likely a quoted field "
                        "whose closing \" is missing; fix the file."
                    )
                carry = buf  # one record longer than the block: read more
                continue
            block, carry = buf[:cut], buf[cut:]
            if header is None:
                block = block.lstrip(b"\r\n")
                if not block:
                    continue
                end = _record_end(block, sep, line_end, first=True)
                header, block = block[:end], block[end:]
            if block:
                yield header, block


def _line_end(head: bytes, sep: int) -> bytes:
    """b"\\r" when the first line outside quotes ends in a lone \\r (old Mac files), else b"\\n" (LF or CRLF)."""
    cr = _record_end(head, sep, b"\r", first=True)
    lf = _record_end(head, sep, b"\n", first=True)
    return b"\r" if cr != -1 and head[cr:cr + 1] != b"\n" and (lf == -1 or cr < lf) else b"\n"


def _record_end(buf: bytes, sep: int, line_end: bytes, first: bool = False) -> int:
    """Index just past the last (``first``: the first) line end of ``buf`` outside quoted fields, -1 if none;
    ``buf`` starts at the start of a record. Quoting is read as pandas and Arrow read it: a quote opens a quoted
    field only at the start of a field, and "" inside one is a quote; elsewhere a quote is text."""
    cut = buf.find(line_end) if first else buf.rfind(line_end)
    if cut == -1 or buf.find(b'"', 0, cut) == -1:  # the plain case: no quote before the line end
        return -1 if cut == -1 else cut + 1
    if not first:
        end = _paired_quotes_record_end(buf, cut, sep, line_end)
        if end is not None:
            return end
    return _scanned_record_end(buf, sep, line_end, first)


def _paired_quotes_record_end(buf: bytes, cut: int, sep: int, line_end: bytes) -> int | None:
    """:func:`_record_end` by counting quotes (vectorised) when every quote before ``cut`` pairs up as RFC 4180
    writes them: the 1st, 3rd, ... opens a field (after a delimiter, a line end, the start or the quote before
    it, as in ""), the 2nd, 4th, ... closes one (before a delimiter, a line end or a quote). Then a line end is
    inside a quoted field exactly when an odd number of quotes come before it. None when the quotes do not
    pair up (a quote inside an unquoted field, text after a closing quote): scan instead."""
    a = np.frombuffer(buf, dtype=np.uint8)
    quotes = np.flatnonzero(a[:cut] == ord('"'))
    bounds = np.zeros(256, dtype=bool)
    bounds[[sep, ord("\n"), ord("\r"), ord('"')]] = True
    opens, closes = quotes[0::2], quotes[1::2]
    if not (bounds[a[opens[opens > 0] - 1]].all() and bounds[a[closes + 1]].all()):
        return None
    k = len(quotes)
    while k % 2:  # the line end at cut is inside the field the last quote opened: look before that field
        cut = buf.rfind(line_end, 0, int(quotes[k - 1]))
        if cut == -1:
            return -1
        k = int(np.searchsorted(quotes, cut))
    return cut + 1


def _scanned_record_end(buf: bytes, sep: int, line_end: bytes, first: bool) -> int:
    """:func:`_record_end` by walking from quote to quote (any quoting, one Python step per quote)."""
    starts = (sep, ord("\n"), ord("\r"))
    pos, last, n = 0, -1, len(buf)
    while True:
        q = buf.find(b'"', pos)
        stop = n if q == -1 else q
        nl = buf.find(line_end, pos, stop) if first else buf.rfind(line_end, pos, stop)
        if nl != -1:
            if first:
                return nl + 1
            last = nl + 1
        if q == -1:
            return last
        if q > 0 and buf[q - 1] not in starts:  # a quote inside an unquoted field is text
            pos = q + 1
            continue
        close = q + 1
        while True:  # to the closing quote, over "" pairs
            close = buf.find(b'"', close)
            if close == -1:
                return last  # the field goes on past the end of buf
            if buf[close + 1:close + 2] != b'"':
                break
            close += 2
        pos = close + 1
