from __future__ import annotations

import pickle

from pyrallel.message import Message


def test_message_pickles_public_fields_only() -> None:
    m = Message("t", 3, 42, b"k", b"v", [("h", b"1")], 1700000000000, attempt=2)
    m._epoch = 7
    copy = pickle.loads(pickle.dumps(m))
    assert (copy.topic, copy.partition, copy.offset, copy.key, copy.value) == (
        "t",
        3,
        42,
        b"k",
        b"v",
    )
    assert copy.headers == [("h", b"1")]
    assert copy.timestamp == 1700000000000
    assert copy.attempt == 2
    assert copy._epoch == 0  # the assignment epoch never leaves the parent


def test_header_lookup_returns_last_value() -> None:
    m = Message("t", 0, 0, None, None, [("a", b"1"), ("b", b"2"), ("a", b"3")])
    assert m.header("a") == b"3"
    assert m.header("zzz") is None
