"""Sharded labeling's library: the assignment of pairs to shards and the merge that checks it."""

from __future__ import annotations

import pytest

from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.sharding import (
    ShardMergeError,
    completion_index,
    merge_records,
    select,
    shard_of,
)


def _recs(n: int) -> list[dict]:
    return [{"id": f"p{i:07d}-{i * 7919 % 1000:03d}", "v": i} for i in range(n)]


def test_assignment_is_a_partition_by_id_alone():
    recs = _recs(1000)
    parts = [select(recs, i, 4) for i in range(4)]
    ids = [r["id"] for part in parts for r in part]
    assert sorted(ids) == sorted(r["id"] for r in recs) and len(ids) == len(set(ids))
    # balanced within a few percent on 1000 ids, and independent of the input order
    assert all(200 <= len(p) <= 300 for p in parts), [len(p) for p in parts]
    assert select(list(reversed(recs)), 2, 4) == list(reversed(parts[2]))
    # the same answer in any process: a SHA-256, not Python's salted hash (pinned values)
    assert [shard_of("a", 2), shard_of("b", 2), shard_of("c", 3)] == [
        int.from_bytes(__import__("hashlib").sha256(x.encode()).digest()[:8], "big") % k
        for x, k in (("a", 2), ("b", 2), ("c", 3))
    ]
    assert {shard_of(r["id"], 1) for r in recs} == {0}
    with pytest.raises(ValueError):
        shard_of("a", 0)


def test_merge_restores_the_input_order_and_refuses_lost_or_doubled_pairs():
    recs = _recs(50)
    expected = [r["id"] for r in recs]
    shards = [{r["id"]: r for r in select(recs, i, 3)} for i in range(3)]
    assert merge_records(shards, expected, 3) == recs

    lost = [dict(s) for s in shards]
    lost[1].pop(next(iter(lost[1])))
    with pytest.raises(ShardMergeError, match="1 pairs missing"):
        merge_records(lost, expected, 3)

    doubled = [dict(s) for s in shards]
    moved = next(iter(doubled[0]))
    doubled[2][moved] = doubled[0][moved]
    with pytest.raises(ShardMergeError, match="labelled by two shards"):
        merge_records(doubled, expected, 3)
    with pytest.raises(ShardMergeError, match="belongs to shard"):
        misplaced = [{k: v for k, v in shards[0].items() if k != moved}, shards[1], doubled[2]]
        merge_records(misplaced, expected, 3)

    extra = [dict(s) for s in shards]
    extra[0]["stranger"] = {"id": "stranger"}
    with pytest.raises(ShardMergeError, match="1 not in the input"):
        merge_records(extra, expected)
    with pytest.raises(ShardMergeError, match="twice"):
        merge_records(shards, expected + expected[:1], 3)


def test_completion_index_from_the_indexed_job():
    assert completion_index(3, {}) is None
    assert completion_index(3, {"JOB_COMPLETION_INDEX": "2"}) == 2
    with pytest.raises(BadInputError, match="outside the 3 shards"):
        completion_index(3, {"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(BadInputError, match="not a shard index"):
        completion_index(3, {"JOB_COMPLETION_INDEX": "x"})
