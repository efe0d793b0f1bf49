"""uid sets as digests (pipelines.build.uids): the same answers as Python sets of strings, at 16 bytes a uid."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipelines.build.run import select
from pipelines.build.uids import SeenUids, UidSet, merge_disjoint, uid_keys
from pipelines.settings import ConfigError
from pipelines.sources.shapes import ShapeRef


def test_a_uid_set_answers_as_a_python_set() -> None:
    rng = random.Random(0)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(5000)]
    done = UidSet.of(uids[:3000] + uids[:10])  # repeats count once
    assert len(done) == 3000 and done.keys.nbytes == 16 * 3000
    assert all(u in done for u in uids[:3000]) and not any(u in done for u in uids[3000:])
    assert done.contains(uid_keys(uids)).tolist() == [i < 3000 for i in range(5000)]
    assert done | UidSet.of(uids[2990:3010]) == set(uids[:3010])
    assert UidSet() == set() and 42 not in done and len(UidSet.of([])) == 0


def test_seen_uids_flags_every_repeat_across_and_within_chunks() -> None:
    rng = np.random.default_rng(1)
    stream = [f"u{int(i)}" for i in rng.integers(0, 3000, 20_000)]  # many repeats
    seen, python = SeenUids(), set()
    for start in range(0, len(stream), 700):
        chunk = stream[start : start + 700]
        expected = []
        for uid in chunk:
            expected.append(uid in python)
            python.add(uid)
        assert seen.add(uid_keys(chunk)).tolist() == expected
    assert len(seen) == len(python)
    assert all(len(part) <= 2 + int(np.log2(len(python))) for part in seen.parts)  # merged, not a run per chunk
    assert all(np.array_equal(r, np.unique(r)) for r in seen.runs)  # each run sorted, without repeats
    assert np.array_equal(np.sort(np.concatenate(seen.runs)), np.unique(uid_keys(list(python))))  # disjoint


def test_merging_two_disjoint_runs_is_their_sorted_union() -> None:
    keys = np.unique(uid_keys([f"k{i}" for i in range(3000)]))
    rng = np.random.default_rng(2)
    for share in (0.0, 0.01, 0.5, 0.99, 1.0):
        in_a = rng.random(len(keys)) < share
        assert np.array_equal(merge_disjoint(keys[in_a], keys[~in_a]), keys), share
    assert len(merge_disjoint(keys[:0], keys[:0])) == 0


def test_select_skips_what_is_done_and_refuses_a_repeated_uid_by_name() -> None:
    refs = [ShapeRef(uid=f"s{i}", source="procedural", locator="cup", category="cup") for i in range(25)]
    done = UidSet.of(["s3", "s17", "gone"])
    picked = [r.uid for r in select(refs, done, "0/1", None, chunk=4)]
    assert picked == [f"s{i}" for i in range(25) if i not in (3, 17)]
    assert [r.uid for r in select(refs, done, "0/1", 5, chunk=4)] == ["s0", "s1", "s2", "s4", "s5"]
    with pytest.raises(ConfigError, match="source lists uid 's2' twice"):
        list(select([*refs[:10], refs[2]], done, "0/1", None, chunk=4))
