"""Recording sparse codes, ranking features, maps and timelines: synthetic codes with known answers."""
from __future__ import annotations

import factories
import numpy as np
import pytest
import torch

from sae_core import SparseAutoencoder, render
from sae_core.blocks.context import CallContext
from sae_core.blocks.unet import patched_output
from sae_core.errors import SAEInputError
from sae_core.observe import analysis, pictures
from sae_core.observe.recording import DENSE_SAE_KEEP, Recording, RecordPatch

N_LATENTS, K = 32, 4
SCHEDULE = (14.6, 7.0, 3.0, 1.0, 0.0)  # 4 steps


def tiny_sae(k: int | None = K, activation: str = "topk", n_latents: int = N_LATENTS) -> SparseAutoencoder:
    return factories.tiny_sae(8, n_latents, k, activation=activation)


def ctx(step: int, kinds=(0,)) -> CallContext:
    return CallContext(tuple(kinds), SCHEDULE[step], SCHEDULE)


def code(rows: int, grid=(4, 4), plant: dict | None = None):
    """A code where every position has latent 0 at 0.1 plus planted {(row, feature): map (h, w)}."""
    h, w = grid
    values = torch.zeros(rows, h, w, K)
    indices = torch.zeros(rows, h, w, K, dtype=torch.long)
    indices[..., 1:] = torch.arange(1, K)  # ids 1..K-1 with value 0: present in the top k but inactive
    values[..., 0] = 0.1
    slot = {}
    for (row, feature), m in (plant or {}).items():
        s = slot.setdefault(row, K - 1)
        indices[row, ..., s] = feature
        values[row, ..., s] = torch.as_tensor(m, dtype=torch.float32)
        slot[row] = s - 1
    return values, indices


def recording_with(calls) -> Recording:
    rec = Recording(tiny_sae(), "mid.0")
    rec.begin_run(n_steps=4, latent_shape=(1, 4, 32, 32))
    for context, (values, indices) in calls:
        rec.add(context, values, indices)
    rec.end_run()
    return rec


def quarter(value: float, grid=(4, 4)) -> torch.Tensor:
    m = torch.zeros(grid)
    m[: grid[0] // 2, grid[1] // 2:] = value  # top-right quarter
    return m


# ---------------------------------------------------------------- recording
def test_record_patch_returns_the_very_same_output_and_stores_the_sparse_code():
    sae = tiny_sae()
    rec = Recording(sae, "mid.0")
    patch = RecordPatch(sae, rec)
    x, y = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5)  # non-square grid, 2 rows
    rec.begin_run(n_steps=4)
    assert patched_output(patch, x, y, ctx(1, kinds=(1, 0))) is y
    (call,) = rec.calls
    assert call.grid == (3, 5) and call.step == 1 and call.chunk_kinds == (1, 0)
    assert call.values.dtype == torch.float16 and call.indices.dtype == torch.int16
    assert call.values.shape == (2, 15, K)  # memory: rows x positions x k
    expected = sae.encode((y - x).permute(0, 2, 3, 1)).reshape(2, 15, N_LATENTS)
    dense = torch.zeros(2, 15, N_LATENTS).scatter_(-1, call.indices.long(), call.values.float())
    assert torch.allclose(dense, expected, atol=1e-2, rtol=1e-3)


def test_dense_saes_keep_their_strongest_latents_and_big_saes_use_int32_ids():
    relu = tiny_sae(k=None, activation="relu", n_latents=128)
    assert Recording(relu, "b").keep == DENSE_SAE_KEEP
    assert Recording(tiny_sae(k=8, n_latents=40000), "b").index_dtype == torch.int32


def test_a_new_run_replaces_the_previous_one():
    rec = recording_with([(ctx(0), code(1, plant={(0, 5): quarter(2.0)}))])
    first = rec.run.number
    rec.begin_run(n_steps=4)
    assert rec.calls == [] and rec.run.number == first + 1
    rec.add(ctx(0), *code(1, plant={(0, 9): quarter(2.0)}))
    rec.end_run()
    assert analysis.rank_features(analysis.select(rec), 1).ids() == [9]


def test_calls_without_a_run_open_one():
    rec = Recording(tiny_sae(), "mid.0")
    rec.add(ctx(0), *code(1))
    assert len(rec.calls) == 1


# ---------------------------------------------------------------- ranking
def test_ranking_by_mean_activation_with_fraction_and_peak():
    plant = {(0, 7): quarter(5.0), (0, 3): torch.full((4, 4), 1.0)}
    rec = recording_with([(ctx(0), code(1, plant=plant))])
    stats = analysis.rank_features(analysis.select(rec), 3)
    assert stats.ids() == [7, 3, 0]
    assert stats.mean.tolist() == pytest.approx([5 * 4 / 16, 1.0, 0.1], rel=1e-3)
    assert stats.fraction.tolist() == pytest.approx([0.25, 1.0, 1.0])
    assert stats.peak.tolist() == pytest.approx([5.0, 1.0, 0.1], rel=1e-3)
    # features that never fired are not listed, even when asked for more
    assert len(analysis.rank_features(analysis.select(rec), 20)) == 3
    table = analysis.format_table(stats, "title")
    lines = table.splitlines()
    assert lines[0] == "title" and lines[1].split() == ["rank", "feature", "mean", "act", "active", "peak"]
    assert lines[2].split() == ["1", "7", "1.25", "25.0%", "5"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


def test_passes_batch_items_and_steps_are_kept_apart():
    # batch 2 with CFG, negative chunk first: rows = [neg img0, neg img1, pos img0, pos img1]
    plant = {(0, 10): quarter(1.0), (1, 11): quarter(1.0), (2, 12): quarter(1.0), (3, 13): quarter(1.0)}
    later = {(2, 20): quarter(1.0)}
    rec = recording_with([(ctx(0, (1, 0)), code(4, plant=plant)), (ctx(1, (1, 0)), code(4, plant=later))])

    def top(**kw):
        return analysis.rank_features(analysis.select(rec, **kw), 1).ids()[0]

    assert top(pass_name="negative", batch=0, step=0) == 10
    assert top(pass_name="negative", batch=1, step=0) == 11
    assert top(pass_name="positive", batch=0, step=0) == 12
    assert top(pass_name="positive", batch=1, step=0) == 13
    assert top(pass_name="positive", batch=0, step=1) == 20
    both_steps = analysis.stats_of(analysis.select(rec, batch=0), [12, 20])
    assert both_steps.mean.tolist() == pytest.approx([0.25 / 2, 0.25 / 2])  # each step weighs the same
    everyone = analysis.stats_of(analysis.select(rec, batch=analysis.ALL, step=0), [12, 13])
    assert everyone.mean.tolist() == pytest.approx([0.25 / 2, 0.25 / 2])


def test_several_calls_in_one_step_are_averaged_before_the_steps():
    # step 0 evaluated twice (e.g. a second-order sampler), step 1 once
    rec = recording_with([(ctx(0), code(1, plant={(0, 5): quarter(4.0)})),
                          (ctx(0), code(1, plant={(0, 5): quarter(2.0)})),
                          (ctx(1), code(1, plant={(0, 5): quarter(0.0)}))])
    steps, values = analysis.timeline(analysis.select(rec), [5])
    assert steps == [0, 1]
    assert values[:, 0].tolist() == pytest.approx([3.0 * 4 / 16, 0.0])
    assert float(analysis.stats_of(analysis.select(rec), [5]).mean[0]) == pytest.approx(1.5 * 4 / 16)


# ---------------------------------------------------------------- maps
def test_aggregated_map_averages_over_the_step_axis_only():
    first = torch.zeros(4, 6)
    first[0, 0] = 4.0
    second = torch.zeros(4, 6)
    second[3, 5] = 2.0
    rec = recording_with([(ctx(0), code(1, (4, 6), {(0, 5): first})),
                          (ctx(1), code(1, (4, 6), {(0, 5): second}))])
    sel = analysis.select(rec)
    maps = analysis.feature_maps(sel, [5])
    assert maps.shape == (1, 4, 6)  # non-square grid kept as (h, w)
    expected = (first + second) / 2
    assert torch.allclose(maps[0], expected)
    steps, per_step = analysis.step_maps(sel, [5, 0])
    assert steps == [0, 1] and per_step.shape == (2, 2, 4, 6)
    assert torch.allclose(per_step[1, 0], second) and torch.allclose(per_step[0, 1], torch.full((4, 6), 0.1), atol=1e-3)
    assert torch.allclose(analysis.feature_maps(analysis.select(rec, step=1), [5])[0], second)


def test_overlay_of_a_planted_map_is_hot_exactly_where_planted():
    rec = recording_with([(ctx(0), code(1, (4, 6), {(0, 5): quarter(3.0, (4, 6))}))])
    maps = analysis.feature_maps(analysis.select(rec), [5]).numpy()
    image = np.full((64, 96, 3), 0.5, np.float32)  # 2:3 image, 16 px per grid cell
    grid = render.pil_to_array(pictures.overlay_grid(image, maps, ["#5"], columns=1))
    tile = grid[:64, :96].astype(int)
    inside = tile[:32, 48:]
    outside = np.ones((64, 96), bool)
    outside[:32, 48:] = False
    assert (inside[..., 0] > 150).all() and (inside[..., 2] < 100).all()  # red
    assert (tile[outside] == 128).all()  # untouched pixels
    mask = pictures.feature_mask(maps[0], 64, 96)
    assert mask.shape == (64, 96) and mask.max() == 1.0
    assert (mask[:32, 48:] == 1.0).all() and (mask[outside] == 0.0).all()
    smooth = pictures.feature_mask(maps[0], 64, 96, "bilinear")
    assert 0.0 <= smooth.min() and smooth.max() <= 1.0 and smooth[8, 80] == pytest.approx(1.0)
    assert smooth[56, 8] == pytest.approx(0.0) and 0 < smooth[31, 60] < 1  # soft edge at the boundary


def test_other_colormaps_and_step_grid():
    rec = recording_with([(ctx(s), code(1, plant={(0, 5): quarter(1.0 + s)})) for s in range(3)])
    sel = analysis.select(rec)
    steps, maps = analysis.step_maps(sel, [5, 0])
    image = np.zeros((32, 32, 3), np.float32)
    grid = pictures.overlay_step_grid(image, maps.numpy(), [5, 0], steps, colormap="viridis")
    assert grid.size[0] == 3 * 32 + 2 * 4  # one column per step
    yellow = render.pil_to_array(grid)[2, 30]
    assert yellow[0] > 100 and yellow[1] > 100 and yellow[2] < 60  # viridis' top is yellow


def test_timeline_and_charts():
    rec = recording_with([(ctx(s), code(1, plant={(0, 5): quarter(float(s))})) for s in range(4)])
    steps, values = analysis.timeline(analysis.select(rec), [5])
    assert steps == [0, 1, 2, 3] and values[:, 0].tolist() == pytest.approx([0, 0.25, 0.5, 0.75])
    table = pictures.timeline_table(steps, [5], values.numpy())
    assert table.splitlines()[0].split() == ["step", "#5"] and table.splitlines()[-1].split() == ["3", "0.75"]
    chart = pictures.timeline_chart(steps, [5], values.numpy(), "t")
    assert (np.abs(render.pil_to_array(chart).astype(int) - render.PALETTE[0]) <= 10).all(-1).sum() > 50


# ---------------------------------------------------------------- errors
def test_errors_say_what_is_wrong_and_what_is_valid():
    empty = Recording(tiny_sae(), "mid.0")
    with pytest.raises(SAEInputError, match="nothing has been recorded at mid.0: the sampler has not run"):
        analysis.select(empty)
    empty.begin_run(n_steps=1)
    empty.end_run()
    with pytest.raises(SAEInputError, match="the sampler ran but never called block mid.0"):
        analysis.select(empty)
    rec = recording_with([(ctx(0), code(2, plant={(0, 5): quarter(1.0)}))])
    with pytest.raises(SAEInputError, match=r"no negative pass was recorded \(at cfg 1 .*recorded passes: positive"):
        analysis.select(rec, "negative")
    with pytest.raises(SAEInputError, match=r"step 7 was not recorded; recorded steps: 0 \(or -1"):
        analysis.select(rec, step=7)
    with pytest.raises(SAEInputError, match=r"batch_index 2 is out of range: the recording has 2 image\(s\) \(0..1"):
        analysis.select(rec, batch=2)
    with pytest.raises(SAEInputError, match="feature 32 does not exist: this SAE has 32 features"):
        analysis.parse_features("5, 32", N_LATENTS)
    assert analysis.parse_features("top 6", N_LATENTS) == 6
    assert analysis.parse_features("4, 7:10", N_LATENTS) == [4, 7]
    with pytest.raises(SAEInputError, match="'top N'"):
        analysis.parse_features("six", N_LATENTS)
    with pytest.raises(SAEInputError, match="is 96x64 px but the recorded block grid is 4x4"):
        analysis.check_aspect((4, 4), 64, 96)
    analysis.check_aspect((17, 16), 520, 512)  # odd latent sizes round up on the grid


def test_aggregated_code_is_the_row_itself_or_the_step_mean():
    from sae_core.observe.analysis import Sample, Selection, aggregated_code

    def sample(step, values, indices):
        return Sample(step, (1, 2), torch.tensor(values), torch.tensor(indices))

    one = Selection([sample(0, [[2.0, 1.0], [0.5, 0.0]], [[3, 1], [3, 9]])], [0], "", 12)
    code = aggregated_code(one, 2)
    assert code.values.shape == (1, 2, 2)
    assert code.values[0, 0].tolist() == [2.0, 1.0] and code.indices[0, 0].tolist() == [3, 1]
    # two steps: feature 3 is 2.0 then 0.0 at position 0 -> mean 1.0; feature 5 is 0 then 4.0 -> 2.0
    two = Selection([sample(0, [[2.0], [1.0]], [[3], [3]]), sample(1, [[4.0], [1.0]], [[5], [3]])], [0, 1], "", 12)
    code = aggregated_code(two, 2)
    assert code.indices[0, 0].tolist() == [5, 3] and code.values[0, 0].tolist() == [2.0, 1.0]
    assert code.indices[0, 1, 0] == 3 and code.values[0, 1, 0] == 1.0
