"""The pure parts of a dataset collected by many processes: the shares, identities, the merge, resume."""
from __future__ import annotations

import json

import pytest
import torch

from sae_core.errors import SAEInputError
from sae_core.train.dataset import MANIFEST, ShardData
from sae_core.train.sharding import (
    WORKERS_DIR,
    ShardedDatasetWriter,
    check_same_run,
    identity_difference,
    merge_shards,
    share_of,
    worker_identity,
)

HEADER = {"name": "d", "model": {"fingerprint": "abc", "family": "sdxl"}, "input_kind": "diff", "dtype": "fp32",
          "settings": {"steps": 1, "seed": 0}, "blocks": {"down.2.1": {"channels": 4}}}
PROMPTS = [f"prompt {i}" for i in range(5)]
SEEDS = list(range(5))


def rows(prompt: int) -> ShardData:
    data = ShardData()
    data.activations.append(torch.full((2, 4), float(prompt)))
    for key in data.rows:
        data.rows[key].append(torch.full((2,), prompt, dtype=torch.int32))
    data.grid = (1, 2)
    return data


def test_shares_are_disjoint_and_together_everything():
    items = list(range(11))
    shares = [share_of(items, r, 3) for r in range(3)]
    assert shares[1] == [1, 4, 7, 10]
    assert sorted(sum(shares, [])) == items
    with pytest.raises(SAEInputError, match="rank 3 is not in a world of 3"):
        share_of(items, 3, 3)


def test_identities_name_what_differs():
    one = worker_identity(HEADER, PROMPTS, SEEDS)
    other_model = worker_identity({**HEADER, "model": {"fingerprint": "xyz"}}, PROMPTS, SEEDS)
    assert identity_difference(one, other_model).startswith("'model' (\"abc\" vs \"xyz\")")
    assert identity_difference(one, worker_identity({**HEADER, "dtype": "fp16"}, PROMPTS, SEEDS)).startswith(
        "'settings'")
    assert identity_difference(one, worker_identity(HEADER, PROMPTS[:3], SEEDS[:3])) is None  # folder keys only
    check_same_run([one, dict(one)])
    with pytest.raises(SAEInputError, match="rank 1 disagrees with rank 0 on 'work'"):
        check_same_run([one, worker_identity(HEADER, PROMPTS[:3], SEEDS[:3])])


def test_merge_keeps_one_entry_per_index_and_drops_missing_files():
    a, b = [{"index": 2, "id": "a"}, {"index": 0, "id": "a"}], [{"index": 2, "id": "b"}, {"index": 1, "id": "b"}]
    assert [(s["index"], s["id"]) for s in merge_shards(a, b)] == [(0, "a"), (1, "b"), (2, "a")]
    assert [s["index"] for s in merge_shards(a, b, exists=lambda s: s["index"] != 1)] == [0, 2]


def run_rank(root, rank: int, world: int, header: dict = HEADER, stop_after: int | None = None) -> list[int]:
    writer = ShardedDatasetWriter(root, header, rank=rank, world_size=world)
    written = []
    for plan in writer.plan(PROMPTS, SEEDS, 2):
        if writer.is_done(plan):
            continue
        if stop_after is not None and len(written) == stop_after:
            break
        writer.write_shard(plan, {"down.2.1": rows(plan.index)})
        written.append(plan.index)
    return written


def test_ranks_write_records_and_rank_0_merges_a_manifest_a_resume_completes(tmp_path):
    assert run_rank(tmp_path, 0, 2, stop_after=1) == [0]  # rank 0 "killed" after its first shard
    assert run_rank(tmp_path, 1, 2) == [1]
    assert not (tmp_path / MANIFEST).exists()
    assert run_rank(tmp_path, 0, 1) == [2]  # a resume with another world size skips shards 0 and 1
    merger = ShardedDatasetWriter(tmp_path, HEADER)
    with pytest.raises(SAEInputError, match="plan the prompts before merging"):
        merger.merge()
    assert all(merger.is_done(plan) for plan in merger.plan(PROMPTS, SEEDS, 2))
    manifest = merger.merge()
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2] and manifest["prompts"] == PROMPTS
    assert json.loads((tmp_path / MANIFEST).read_text())["shards"] == manifest["shards"]
    assert not list((tmp_path / WORKERS_DIR).glob("*.json"))


def test_a_worker_that_disagrees_with_the_records_is_refused(tmp_path):
    run_rank(tmp_path, 1, 2)
    with pytest.raises(SAEInputError, match=r"different 'model'.*rank 0\) is refused"):
        ShardedDatasetWriter(tmp_path, {**HEADER, "model": {"fingerprint": "other"}}, rank=0, world_size=2)
    writer = ShardedDatasetWriter(tmp_path, HEADER, rank=0, world_size=2)
    with pytest.raises(SAEInputError, match="already holds shard 1 made from other prompts"):
        writer.plan(PROMPTS[:2] + ["y"] + PROMPTS[3:], SEEDS, 2)
