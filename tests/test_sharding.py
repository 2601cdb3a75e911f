"""The pure parts of a dataset collected by many processes: the shares, identities, the merge, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from factories import tiny_sae

from sae_core.errors import SAEInputError
from sae_core.evaluate.sweep import GridLayout, LabelledPrompt, Run, RunRecord, Setting, SweepPlan, SweepResult
from sae_core.evaluate.sweep_share import SweepPart, merge_sweep_parts, run_boxes
from sae_core.observe.concept_recorder import ConceptRecordPatch
from sae_core.train.dataset import MANIFEST, ShardData
from sae_core.train.sharding import (
    WHOLE,
    WORKERS_DIR,
    ShardedDatasetWriter,
    WorkShare,
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


def test_a_work_share_picks_its_items_and_gathers_alone_by_default():
    assert WHOLE.alone and WHOLE.pick([3, 4, 5]) == [3, 4, 5] and WHOLE.gather("x") == ["x"]
    share = WorkShare(1, 2, gather=lambda obj: ["rank 0", obj])
    assert not share.alone and share.pick(list("abcde")) == ["b", "d"] and share.gather("me") == ["rank 0", "me"]


def test_recorded_profile_sums_of_several_processes_add_up():
    recorder = ConceptRecordPatch(tiny_sae(8, 16, 2))
    first = torch.arange(32, dtype=torch.float64).reshape(2, 16)
    parts = [{"sigmas": (2.0, 1.0), "sums": {"target": first}, "rows": {"target": [2, 2]}},
             {"sigmas": None, "sums": {}, "rows": {}},  # a rank that had no batch
             {"sigmas": (2.0, 1.0), "sums": {"target": first * 3, "other": first}, "rows": {"target": [2, 2],
                                                                                           "other": [1, 0]}}]
    recorder.merge_totals(parts)
    assert recorder.sigmas == (2.0, 1.0)
    assert torch.equal(recorder.mean("target"), (first * 4 / 4).float())
    assert torch.equal(recorder.mean("other"), first.float())  # a step with no row stays its (zero) sum
    assert torch.equal(parts[0]["sums"]["target"], first)  # the parts are not changed
    with pytest.raises(SAEInputError, match="2 different schedules"):
        recorder.merge_totals([parts[0], {**parts[2], "sigmas": (3.0, 1.0)}])


def test_sweep_parts_merge_into_the_one_process_grid_and_result():
    plan = SweepPlan.build(["vangogh"], [95.0, 99.5], [-1.0], [LabelledPrompt("a", "vangogh")], [0, 1])
    layout = GridLayout(plan, (16, 16), 32)
    runs = list(plan.runs())  # the un-edited model and 2 settings
    width, height = layout.size
    parts = []
    for rank in range(2):
        mine = runs[rank::2]
        grid = torch.zeros(1, height, width, 3)
        for run in mine:
            for left, top, w, h in run_boxes(layout, run):
                grid[0, top:top + h, left:left + w] = rank + 1.0
        records = {run: RunRecord(run, probabilities=np.full((2, 1), float(rank))) for run in mine}
        rows = [feature_row_of(s, 10 * rank + i if Run(0, s) in mine else None) for i, s in enumerate(plan.settings)]
        parts.append(SweepPart(mine, grid, SweepResult(plan, ("vangogh",), None, records, feature_rows=rows)))
    grid, result = merge_sweep_parts(layout, parts)
    for rank, run in ((0, runs[0]), (1, runs[1]), (0, runs[2])):
        for left, top, w, h in run_boxes(layout, run):
            assert torch.all(grid[0, top:top + h, left:left + w] == rank + 1.0)
        assert result.records[run].probabilities[0, 0] == rank
    assert float(grid.sum()) == float(parts[0].grid.sum() + parts[1].grid.sum())  # nothing else drawn over
    assert list(result.records) == runs
    assert [r["edited_positions"] for r in result.feature_rows] == [10, 1]  # each from its owner
    with pytest.raises(SAEInputError, match="1 runs of the sweep were run by no rank"):
        merge_sweep_parts(layout, parts[:1])
    with pytest.raises(SAEInputError, match="two ranks ran the same sweep run"):
        merge_sweep_parts(layout, [parts[0], parts[0], parts[1]])


def feature_row_of(setting: Setting, edited: int | None) -> dict:
    return {"concept": "vangogh", "percentile": setting.percentile, "multiplier": setting.multiplier,
            "features_per_step": [1], "distinct_features": 1, "edited_positions": edited}
