"""Commit-metadata codec: round trips, encoding choice, budget, hostile input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrallel.offsets import metadata as md
from pyrallel.offsets.metadata import (
    DEFAULT_MAX_BYTES,
    MAX_OFFSET,
    PREFIX,
    DoneRanges,
    decode,
    encode,
    encoded_size,
)
from pyrallel.offsets.tracker import PartitionTracker

Ranges = list[tuple[int, int]]
NO_LIMIT = 10**9
B85_ALPHABET = (
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"
)
VALID = encode(0, [(2, 5)]) or ""


def both_forms(commit: int, ranges: Ranges) -> tuple[str, str]:
    """The run-length and the bitset encodings, whichever encode() would pick."""
    return (
        md._seal(md._RLE, md._rle_body(commit, ranges)),
        md._seal(md._BITSET, md._bitset_body(commit, ranges)),
    )


def seal(mode: str, body: bytes) -> str:
    """A well-formed envelope (valid prefix, base85 and CRC) around an arbitrary body."""
    return md._seal(mode, bytearray(body))


def varint(value: int) -> bytes:
    out = bytearray()
    md._put_varint(out, value)
    return bytes(out)


@st.composite
def sparse_ranges(draw: st.DrawFn, max_len: int = 40) -> tuple[int, Ranges]:
    """A commit offset and ascending ranges above it separated by >= 1 offset."""
    commit = draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**62)), label="commit")
    sizes = st.one_of(st.integers(0, 3), st.integers(0, 200), st.integers(0, 2**40))
    pairs = draw(st.lists(st.tuples(sizes, sizes), max_size=max_len), label="gap/extra")
    ranges: Ranges = []
    prev_end = commit - 1
    for gap, extra in pairs:
        start = prev_end + 2 + gap
        end = start + extra
        if end > MAX_OFFSET:
            break
        ranges.append((start, end))
        prev_end = end
    return commit, ranges


def bitset_friendly(commit: int, ranges: Ranges) -> bool:
    return not ranges or ranges[-1][1] - commit < 200_000


# -- round trips -----------------------------------------------------------------------


@settings(max_examples=500)
@given(sparse_ranges())
def test_round_trip(case: tuple[int, Ranges]) -> None:
    commit, ranges = case
    text = encode(commit, ranges, max_bytes=NO_LIMIT)
    assert text is not None
    assert text.isascii()
    assert len(text.encode()) == encoded_size(commit, ranges)
    assert decode(text, commit) == ranges
    if ranges:
        assert text.startswith(PREFIX)
        assert decode(text, commit + 1) is None
        assert decode(text, commit - 1) is None
    else:
        assert text == ""


@settings(max_examples=300)
@given(sparse_ranges(max_len=25))
def test_the_smaller_form_is_chosen(case: tuple[int, Ranges]) -> None:
    commit, ranges = case
    if not ranges or not bitset_friendly(commit, ranges):
        return
    rle, bitset = both_forms(commit, ranges)
    assert decode(rle, commit) == ranges
    assert decode(bitset, commit) == ranges
    text = encode(commit, ranges, max_bytes=NO_LIMIT)
    assert text == (rle if len(rle) <= len(bitset) else bitset)


def test_many_tiny_ranges_pick_the_bitset() -> None:
    commit = 1_000_000
    ranges = [(commit + 2 + 2 * i, commit + 2 + 2 * i) for i in range(500)]
    rle, bitset = both_forms(commit, ranges)
    assert len(bitset) < len(rle)
    text = encode(commit, ranges)
    assert text == bitset
    assert text[len(PREFIX)] == "b"
    assert decode(text, commit) == ranges


def test_few_huge_ranges_pick_run_length() -> None:
    commit = 42
    ranges = [(100, 50_000), (60_000, 1_000_000), (1_000_002, 9_000_000)]
    rle, bitset = both_forms(commit, ranges)
    assert len(rle) < len(bitset)
    text = encode(commit, ranges)
    assert text == rle
    assert text[len(PREFIX)] == "r"
    assert len(text) < 40
    assert decode(text, commit) == ranges


def test_empty_ranges_mean_no_metadata() -> None:
    assert encode(5, []) == ""
    assert encode(5, [], max_bytes=0) == ""
    assert encoded_size(5, []) == 0
    assert decode("", 5) == []
    assert decode(None, 5) == []


def test_touching_ranges_are_merged() -> None:
    text = encode(0, [(1, 3), (4, 4), (6, 9), (10, 12)])
    assert decode(text, 0) == [(1, 4), (6, 12)]


@pytest.mark.parametrize(
    ("commit", "ranges"),
    [
        (-1, [(1, 2)]),
        (MAX_OFFSET + 1, [(1, 2)]),
        (10, [(10, 12)]),  # not above the commit offset
        (10, [(5, 7)]),
        (10, [(13, 12)]),  # end before start
        (10, [(12, 15), (14, 20)]),  # overlap
        (10, [(20, 25), (12, 15)]),  # descending
        (10, [(12, MAX_OFFSET + 1)]),
    ],
)
def test_invalid_ranges_are_a_caller_bug(commit: int, ranges: Ranges) -> None:
    with pytest.raises(ValueError):
        encode(commit, ranges)
    with pytest.raises(ValueError):
        encoded_size(commit, ranges)


def test_offsets_up_to_the_kafka_maximum() -> None:
    commit = MAX_OFFSET - 10
    for ranges in ([(MAX_OFFSET, MAX_OFFSET)], [(commit + 1, MAX_OFFSET)]):
        assert decode(encode(commit, ranges), commit) == ranges


# -- budget ----------------------------------------------------------------------------


def test_stuck_head_with_a_long_finished_tail_is_tiny() -> None:
    t = PartitionTracker()
    t.add(1000, 0.0)  # stuck
    for offset in range(1001, 21001):
        t.add(offset, 0.0)
        t.complete(offset, 0.0)
    commit = t.commit_offset
    assert commit == 1000
    text = encode(commit, t.completed_ranges())
    assert text is not None
    assert len(text.encode()) < 32
    assert decode(text, commit) == [(1001, 21000)]


def test_alternating_done_and_pending_respects_the_budget() -> None:
    t = PartitionTracker()
    t.add(0, 0.0)
    for i in range(1, 40_001):
        t.add(i, 0.0)
        if i % 2 == 0:
            t.complete(i, 0.0)  # 20,000 done offsets, each between two pending ones
    ranges = t.completed_ranges()
    assert len(ranges) == 20_000
    text = encode(0, ranges)
    assert text is None or len(text.encode()) <= DEFAULT_MAX_BYTES
    assert encoded_size(0, ranges) > DEFAULT_MAX_BYTES  # 40,000 bits = 5,000 bytes
    # Half of it fits and still decodes exactly.
    half = ranges[:10_000]
    text = encode(0, half)
    assert text is not None
    assert len(text.encode()) <= DEFAULT_MAX_BYTES
    assert decode(text, 0) == half


@settings(max_examples=300)
@given(sparse_ranges(max_len=60), st.integers(0, 400))
def test_budget_is_never_exceeded(case: tuple[int, Ranges], max_bytes: int) -> None:
    commit, ranges = case
    text = encode(commit, ranges, max_bytes=max_bytes)
    size = encoded_size(commit, ranges)
    if text is None:
        assert size > max_bytes
    else:
        assert len(text.encode()) == size <= max_bytes


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"consumer": "other", "offset": 12}',
        '""',
        "null",
        " ",
        "pyr",
        "pyr1",
        "pyr1r",
        "pyr1b",
        "pyr1x0000000",
        "pyr2" + VALID[4:],  # another version
        "PYR1" + VALID[4:],
        VALID + " ",
        " " + VALID,
        VALID[:4] + "x" + VALID[5:],  # unknown mode
        "pyr1r\u00e9\u00e9\u00e9\u00e9\u00e9",
        "pyr1r~~~~~",  # base85 overflow
        "pyr1r0",  # non-canonical base85
    ],
)
def test_foreign_or_corrupt_metadata_is_rejected(text: str) -> None:
    assert decode(text, 0) is None


@settings(max_examples=1000)
@given(st.text(), st.integers(0, 2**63))
def test_arbitrary_text_never_raises(text: str, commit: int) -> None:
    result = decode(text, commit)
    if text and not text.startswith(PREFIX):
        assert result is None
    assert result is None or isinstance(result, list)


@settings(max_examples=500)
@given(st.sampled_from(["r", "b"]), st.text(alphabet=B85_ALPHABET))
def test_arbitrary_base85_never_raises(mode: str, text: str) -> None:
    assert well_formed(decode(PREFIX + mode + text, 0), 0)


def well_formed(result: Ranges | None, commit: int) -> bool:
    if result is None:
        return True
    prev_end = commit - 1
    for start, end in result:
        if not (prev_end + 2 <= start <= end <= MAX_OFFSET):
            return False
        prev_end = end
    return True


@settings(max_examples=1000)
@given(st.sampled_from(["r", "b"]), st.integers(0, 2**40), st.binary(max_size=64))
def test_arbitrary_body_in_a_valid_envelope(mode: str, commit: int, tail: bytes) -> None:
    result = decode(seal(mode, varint(commit) + tail), commit)
    assert well_formed(result, commit)
    result = decode(seal(mode, tail), commit)
    assert well_formed(result, commit)


@pytest.mark.parametrize(
    ("mode", "body"),
    [
        ("r", b""),  # no base
        ("r", varint(7)),  # no ranges
        ("r", varint(7) + b"\x00"),  # half a pair
        ("r", varint(7) + b"\x00\x80"),  # truncated varint
        ("r", varint(7) + b"\x80" * 11 + b"\x00"),  # varint too long
        ("r", varint(7) + varint(MAX_OFFSET) + b"\x00"),  # beyond the largest offset
        ("b", b""),
        ("b", varint(7)),  # no bits
        ("b", varint(7) + b"\x05\x00"),  # trailing zero byte (non-canonical)
        ("r", varint(8) + b"\x00\x00"),  # written at another commit offset
        ("b", varint(8) + b"\x01"),
    ],
)
def test_structurally_invalid_bodies_are_rejected(mode: str, body: bytes) -> None:
    assert decode(seal(mode, body), 7) is None


def test_non_canonical_base85_is_rejected() -> None:
    text = seal("b", varint(0) + b"\x01\x01\x01")  # 8 bytes: two full base85 hunks
    assert decode(text, 0) == [(1, 1), (9, 9), (17, 17)]
    # A dangling 1-character hunk decodes to no bytes: same payload, other text.
    assert decode(text + "0", 0) is None


def test_valid_crafted_bodies_decode() -> None:
    assert decode(seal("r", varint(7) + b"\x00\x00"), 7) == [(8, 8)]
    assert decode(seal("r", varint(7) + b"\x01\x02\x00\x00"), 7) == [(9, 11), (13, 13)]
    assert decode(seal("b", varint(7) + b"\x05"), 7) == [(8, 8), (10, 10)]
    assert decode(seal("b", varint(7) + b"\x00\x01"), 7) == [(16, 16)]


@pytest.mark.parametrize(
    ("commit", "ranges"),
    [
        (0, [(2, 5)]),
        (123_456_789, [(123_456_800, 123_457_000), (123_460_000, 123_470_000)]),
        (10, [(12 + 3 * i, 13 + 3 * i) for i in range(100)]),
    ],
)
def test_truncated_or_mutated_encodings_are_rejected(commit: int, ranges: Ranges) -> None:
    text = encode(commit, ranges)
    assert text is not None
    for cut in range(1, len(text)):
        assert decode(text[:cut], commit) is None, cut
    alphabet = B85_ALPHABET
    rng = random.Random(0)
    for i in range(len(PREFIX) + 1, len(text)):
        other = rng.choice([c for c in alphabet if c != text[i]])
        # One character changes one 4-byte hunk: a burst CRC32 always detects.
        assert decode(text[:i] + other + text[i + 1 :], commit) is None, i


# -- tracker integration ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_tracker_ranges_survive_a_handover(data: st.DataObject) -> None:
    t = PartitionTracker()
    offset = data.draw(st.integers(0, 10**12))
    fetched: list[int] = []
    for _ in range(data.draw(st.integers(1, 120))):
        t.add(offset, 0.0)
        fetched.append(offset)
        offset += 1 + data.draw(st.sampled_from([0, 0, 1, 3, 100]))
    done = set(data.draw(st.lists(st.sampled_from(fetched), unique=True)))
    for o in data.draw(st.permutations(sorted(done))):
        t.complete(o, 0.0)
    commit = t.commit_offset
    assert commit is not None
    text = encode(commit, t.completed_ranges())
    assert text is not None
    skip = DoneRanges(decode(text, commit) or [])
    # What the next owner would do: re-fetch from the commit offset, skip what's done.
    for o in fetched:
        if o >= commit:
            assert skip.contains(o) == (o in done)


# -- DoneRanges ------------------------------------------------------------------------


@settings(max_examples=300)
@given(sparse_ranges(max_len=30), st.data())
def test_done_ranges_contains(case: tuple[int, Ranges], data: st.DataObject) -> None:
    commit, ranges = case
    ranges = [(s, e) for s, e in ranges if e - commit < 10_000]
    dr = DoneRanges(ranges)

    def expected(o: int) -> bool:
        return any(s <= o <= e for s, e in ranges)

    probes = sorted({commit - 1, commit, *[p for s, e in ranges for p in (s - 1, s, e, e + 1)]})
    for o in probes:  # increasing stream
        assert dr.contains(o) == expected(o)
    for o in data.draw(st.permutations(probes)):  # any order
        assert (o in dr) == expected(o)
    extra = data.draw(st.lists(st.integers(commit - 5, commit + 10_005), max_size=50))
    for o in extra:
        assert dr.contains(o) == expected(o)
    for o in sorted(extra):
        assert dr.contains(o) == expected(o)


def test_done_ranges_basics() -> None:
    empty = DoneRanges()
    assert empty.is_empty
    assert len(empty) == 0
    assert empty.covered_until is None
    assert not empty.contains(0)
    dr = DoneRanges([(3, 5), (9, 9)])
    assert not dr.is_empty
    assert len(dr) == 2
    assert dr.covered_until == 9
    assert dr.ranges == [(3, 5), (9, 9)]
    assert [o for o in range(12) if dr.contains(o)] == [3, 4, 5, 9]
    assert dr.contains(4)  # backwards after the cursor moved past everything
    assert "DoneRanges" in repr(dr)
    for bad in ([(5, 3)], [(1, 3), (3, 4)], [(5, 6), (1, 2)]):
        with pytest.raises(ValueError):
            DoneRanges(bad)


def test_done_ranges_stream_is_linear() -> None:
    ranges = [(10 * i, 10 * i + 4) for i in range(100_000)]
    dr = DoneRanges(ranges)
    hits = sum(dr.contains(o) for o in range(0, 1_000_000, 3))
    assert hits == sum(1 for o in range(0, 1_000_000, 3) if o % 10 <= 4)
