"""The bucket hash is FNV-1a 64 of the UTF-8 bytes: fixed vectors pin it on every machine and version."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from transforms.buckets import bucket_numbers, fnv1a_64


def test_fnv1a_64_matches_the_published_test_vectors() -> None:
    ids = pl.Series(["", "a", "foobar", "中"])
    assert fnv1a_64(ids).to_list() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8, 0x1E59811B678A02D4]


def test_bucket_numbers_are_fixed_for_fixed_ids() -> None:
    ids = pl.Series(["13800000000", "13800000001", "BB-0042", "x" * 32])
    assert bucket_numbers(ids, 7).to_list() == [int(fnv1a_64(ids)[i]) % 7 for i in range(4)]
    assert bucket_numbers(ids, 7).to_list() == [6, 3, 5, 4]
    assert bucket_numbers(ids, 1).to_list() == [0, 0, 0, 0]


def test_a_null_id_goes_to_bucket_zero_and_slices_hash_like_whole_series() -> None:
    ids = pl.Series(["a", None, "foobar", "ab"])
    assert bucket_numbers(ids, 5)[1] == 0
    assert fnv1a_64(ids.slice(2, 2)).to_list() == fnv1a_64(pl.Series(["foobar", "ab"])).to_list()
    assert fnv1a_64(ids[:0]).to_list() == []


@given(st.lists(st.text(max_size=32), max_size=50), st.integers(min_value=1, max_value=64))
def test_a_bucket_depends_only_on_the_id(ids: list[str], buckets: int) -> None:
    together = bucket_numbers(pl.Series(ids, dtype=pl.String), buckets).to_list()
    alone = [bucket_numbers(pl.Series([i], dtype=pl.String), buckets)[0] for i in ids]
    assert together == alone
    assert all(0 <= b < buckets for b in together)


def python_fnv1a_64(text: str) -> int:
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) % 2**64
    return value


@given(st.lists(st.text(max_size=40), max_size=30))
def test_the_vectorized_hash_equals_the_byte_loop(ids: list[str]) -> None:
    assert fnv1a_64(pl.Series(ids, dtype=pl.String)).to_list() == [python_fnv1a_64(i) for i in ids]
