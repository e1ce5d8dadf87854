"""Commit-metadata codec: the offsets already finished above a committed offset.

When Pyrallel commits offset ``C`` for a partition, offsets above ``C`` may already be
finished (they completed while a lower one was still in flight). They travel in the
commit's metadata string so that the next owner of the partition, after a rebalance or
a crash, skips them instead of processing them again.

Format (version 1)::

    metadata := "pyr1" MODE BASE85( BODY || CRC32(MODE || BODY) )
    MODE     := "r"                       run-length encoding
              | "b"                       bitset
    BODY(r)  := UVARINT(C) ( UVARINT(gap) UVARINT(length - 1) )+
    BODY(b)  := UVARINT(C) BITS

* ``UVARINT`` is unsigned LEB128 (7 bits per byte, least significant group first, high
  bit set on every byte but the last), at most 10 bytes; ``C`` is the commit offset the
  metadata was written with, and decoding rejects any other one.
* Run-length: ranges in ascending order, each as the count of not-done offsets before it
  then its length. The first range starts at ``C + 1 + gap``, every next one at
  ``previous_end + 2 + gap`` (ranges never touch, so at least one offset separates them).
* Bitset: bit ``k`` (byte ``k // 8``, bit ``k % 8``, least significant first) set means
  offset ``C + 1 + k`` is done. ``C`` itself is never done (it is the commit point), so
  the bits start at ``C + 1``; the last byte is non-zero (no trailing zero bytes).
* ``CRC32`` (zlib) is 4 bytes, big endian, over the mode character and the body.
* ``BASE85`` is :func:`base64.b85encode` (RFC 1924 alphabet, no padding), ASCII only,
  without quotes, backslashes or whitespace.

Both bodies are sized before anything is built and the smaller wins (run-length on a
tie): few long ranges favour run-length, many short ones the bitset. No ranges encode
as ``""`` (no metadata). Ranges may cover offsets that were never fetched (holes in the
log); a consumer treats them as done, which is harmless as there is nothing there.
"""

from __future__ import annotations

import re
import zlib
from base64 import b85decode, b85encode
from bisect import bisect_left
from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PREFIX",
    "DoneRanges",
    "decode",
    "encode",
    "encoded_size",
]

PREFIX = "pyr1"
"""Identifies Pyrallel metadata and the format version."""

DEFAULT_MAX_BYTES = 4096
"""The broker's default ``offset.metadata.max.bytes``."""

MAX_OFFSET = 2**63 - 1
"""The largest Kafka offset (a signed 64-bit integer)."""

_RLE = "r"
_BITSET = "b"
_CRC_BYTES = 4
_MAX_VARINT_BYTES = 10
_RUNS_OF_ONES = re.compile("1+")

Ranges = list[tuple[int, int]]


# -- sizes -----------------------------------------------------------------------------


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _b85_len(n: int) -> int:
    """Characters :func:`base64.b85encode` produces for ``n`` bytes (no padding)."""
    full, rest = divmod(n, 4)
    return 5 * full + (rest + 1 if rest else 0)


def _normalise(commit_offset: int, ranges: Sequence[tuple[int, int]]) -> Ranges:
    """Validate ascending disjoint ranges above ``commit_offset``; merge touching ones."""
    if not 0 <= commit_offset <= MAX_OFFSET:
        raise ValueError(f"commit offset {commit_offset} is out of range")
    out: Ranges = []
    floor = commit_offset + 1
    for start, end in ranges:
        if start < floor or end < start or end > MAX_OFFSET:
            raise ValueError(
                f"range ({start}, {end}) is not ascending, disjoint and above the commit "
                f"offset {commit_offset}"
            )
        if out and start == out[-1][1] + 1:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        floor = end + 1
    return out


def _sizes(commit_offset: int, ranges: Ranges) -> tuple[int, int]:
    """Raw payload sizes (body + CRC) of the run-length and bitset forms."""
    head = _varint_len(commit_offset) + _CRC_BYTES
    rle = head
    prev_end = commit_offset - 1  # so the first gap is start - (C + 1)
    for start, end in ranges:
        rle += _varint_len(start - prev_end - 2) + _varint_len(end - start)
        prev_end = end
    bitset = head + (prev_end - commit_offset + 7) // 8
    return rle, bitset


def encoded_size(commit_offset: int, ranges: Sequence[tuple[int, int]]) -> int:
    """UTF-8 bytes :func:`encode` would produce with no budget (0 for no ranges)."""
    norm = _normalise(commit_offset, ranges)
    if not norm:
        return 0
    return len(PREFIX) + 1 + _b85_len(min(_sizes(commit_offset, norm)))


# -- encoding --------------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _rle_body(commit_offset: int, ranges: Ranges) -> bytearray:
    body = bytearray()
    _put_varint(body, commit_offset)
    prev_end = commit_offset - 1
    for start, end in ranges:
        _put_varint(body, start - prev_end - 2)
        _put_varint(body, end - start)
        prev_end = end
    return body


def _bitset_body(commit_offset: int, ranges: Ranges) -> bytearray:
    body = bytearray()
    _put_varint(body, commit_offset)
    first = commit_offset + 1
    nbits = ranges[-1][1] - commit_offset
    chars = bytearray(b"0") * nbits  # chars[k] is offset first + k
    for start, end in ranges:
        chars[start - first : end - first + 1] = b"1" * (end - start + 1)
    chars.reverse()  # most significant (highest offset) first for int()
    body += int(chars, 2).to_bytes((nbits + 7) // 8, "little")
    return body


def _seal(mode: str, body: bytearray) -> str:
    crc = zlib.crc32(body, zlib.crc32(mode.encode("ascii")))
    body += crc.to_bytes(_CRC_BYTES, "big")
    return PREFIX + mode + b85encode(bytes(body)).decode("ascii")


def encode(
    commit_offset: int,
    ranges: Sequence[tuple[int, int]],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str | None:
    """The metadata string for ``ranges`` done above ``commit_offset``.

    ``ranges`` are inclusive, ascending, disjoint and all above ``commit_offset`` (as
    :meth:`PartitionTracker.completed_ranges` returns them); touching ranges are merged.
    Returns ``""`` for no ranges and None when the result would exceed ``max_bytes``
    UTF-8 bytes (the caller then stops admitting work on the partition until it fits).
    Raises ValueError for ranges that break those rules (a caller bug, not bad data).
    """
    norm = _normalise(commit_offset, ranges)
    if not norm:
        return ""
    rle, bitset = _sizes(commit_offset, norm)
    if len(PREFIX) + 1 + _b85_len(min(rle, bitset)) > max_bytes:
        return None
    if rle <= bitset:
        return _seal(_RLE, _rle_body(commit_offset, norm))
    return _seal(_BITSET, _bitset_body(commit_offset, norm))


# -- decoding --------------------------------------------------------------------------


class _Corrupt(Exception):
    pass


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(len(data), pos + _MAX_VARINT_BYTES)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise _Corrupt


def _decode_rle(body: bytes, pos: int, commit_offset: int) -> Ranges:
    out: Ranges = []
    prev_end = commit_offset - 1
    while pos < len(body):
        gap, pos = _get_varint(body, pos)
        extra, pos = _get_varint(body, pos)
        start = prev_end + 2 + gap
        prev_end = start + extra
        out.append((start, prev_end))
    if not out:
        raise _Corrupt
    return out


def _decode_bitset(body: bytes, pos: int, commit_offset: int) -> Ranges:
    bits = body[pos:]
    if not bits or bits[-1] == 0:
        raise _Corrupt
    chars = f"{int.from_bytes(bits, 'little'):b}"[::-1]  # chars[k] is offset C + 1 + k
    first = commit_offset + 1
    return [(first + m.start(), first + m.end() - 1) for m in _RUNS_OF_ONES.finditer(chars)]


def decode(metadata: str | None, commit_offset: int) -> Ranges | None:
    """The done ranges stored in ``metadata`` for a partition committed at ``commit_offset``.

    Returns ``[]`` for empty or missing metadata, the inclusive ascending ranges (all
    above ``commit_offset``) for valid Pyrallel metadata written at that offset, and None
    for anything else: foreign, corrupt, truncated, another version, written at another
    commit offset. Never raises.
    """
    if not metadata:
        return []
    if not isinstance(metadata, str) or not metadata.startswith(PREFIX):
        return None
    mode, text = metadata[len(PREFIX) : len(PREFIX) + 1], metadata[len(PREFIX) + 1 :]
    if mode not in (_RLE, _BITSET):
        return None
    try:
        raw = b85decode(text)
        if b85encode(raw).decode("ascii") != text:  # reject non-canonical text
            return None
    except ValueError:
        return None
    if len(raw) <= _CRC_BYTES:
        return None
    body, crc = raw[:-_CRC_BYTES], raw[-_CRC_BYTES:]
    if zlib.crc32(body, zlib.crc32(mode.encode("ascii"))) != int.from_bytes(crc, "big"):
        return None
    try:
        base, pos = _get_varint(body, 0)
        if base != commit_offset:
            return None
        decoder = _decode_rle if mode == _RLE else _decode_bitset
        ranges = decoder(body, pos, commit_offset)
    except _Corrupt:
        return None
    if ranges[-1][1] > MAX_OFFSET:
        return None
    return ranges


# -- lookup ----------------------------------------------------------------------------


class DoneRanges:
    """Offsets known to be done, for skipping re-fetched messages after a rebalance.

    :meth:`contains` keeps a cursor, so a stream of increasing offsets costs O(1)
    amortised; any other order falls back to a binary search and moves the cursor.
    ``len()`` is the number of ranges, not of offsets.
    """

    __slots__ = ("_cursor", "_ends", "_starts")

    def __init__(self, ranges: Sequence[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            if end < start or (self._ends and start <= self._ends[-1]):
                raise ValueError(f"range ({start}, {end}) is not ascending and disjoint")
            self._starts.append(start)
            self._ends.append(end)
        self._cursor = 0
        """Index of the first range ending at or after the last offset looked up."""

    def contains(self, offset: int) -> bool:
        """Whether ``offset`` lies in one of the ranges."""
        ends, i = self._ends, self._cursor
        if i > 0 and offset <= ends[i - 1]:
            i = bisect_left(ends, offset, 0, i)
        elif i < len(ends) and ends[i] < offset:
            i += 1
            if i < len(ends) and ends[i] < offset:
                i = bisect_left(ends, offset, i)
        self._cursor = i
        return i < len(ends) and self._starts[i] <= offset

    __contains__ = contains

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def is_empty(self) -> bool:
        return not self._starts

    @property
    def covered_until(self) -> int | None:
        """The highest done offset (None when empty): nothing above it is ever skipped."""
        return self._ends[-1] if self._ends else None

    @property
    def ranges(self) -> Ranges:
        return list(zip(self._starts, self._ends, strict=True))

    def __repr__(self) -> str:
        return f"DoneRanges({self.ranges!r})"
