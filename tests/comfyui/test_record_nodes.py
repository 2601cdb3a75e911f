"""Recording, top features, heatmaps and timelines inside ComfyUI's real sampler (tiny SDXL-layout U-Net)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import BlockProbe, build_unet, random_conditioning, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402  (the pack's own copy)
from sae_lab_pack.sae_core.observe.recording import Recording  # noqa: E402
from sae_lab_pack.nodes import routes  # noqa: E402
from sae_lab_pack.nodes.observe import (SAEFeatureHeatmap, SAEFeatureTimeline, SAEInspect,  # noqa: E402
                                       SAERecordActivations, SAETopFeatures)
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402

BLOCK = "input_blocks.8.1"  # down.2.1: a 16x16 grid for a 64x64 latent
PLANTED = 77


@pytest.fixture(scope="module")
def sdxl():
    return build_unet("sdxl")


@pytest.fixture(scope="module")
def sae():
    return comfy_harness.tiny_sae(hookpoint="unet.down_blocks.2.attentions.1", encoder_gain=3.0, mean="random")


def record(model, sae, block=""):
    model, recording = SAERecordActivations.execute(model, sae, block).result
    assert isinstance(recording, Recording)
    return model, recording


def steer(model, sae, features, mode="add", strength=10.0, **kwargs):
    return SAEFeatureSteer.execute(model, sae, str(features), mode, strength, **kwargs).result[0]


def top(recording, latent, **kwargs):
    out = SAETopFeatures.execute(recording, latent={"samples": latent}, **kwargs)
    table, chart, ids = out.result
    shown = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    assert shown["text"] == (table,) and shown["sae_lab_features"] == [int(i) for i in ids.split(", ")]
    return table, chart, [int(i) for i in ids.split(", ")]


def inspect(recording, image, **kwargs) -> tuple[torch.Tensor, str]:
    """SAE Inspect's MASK and the id its UI message gives the inspect routes (which must serve it)."""
    out = SAEInspect.execute(recording, image, **kwargs)
    shown = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    entry = shown["sae_lab_inspect"][0]
    assert entry["images"] and entry["images"][0]["type"] == "temp"
    return out.result[0], entry["id"]


def encode(sae, x, y):
    return sae.encode_topk((y - x).permute(0, 2, 3, 1))


def top_right_mask(height, width):
    mask = torch.zeros(1, height, width)
    mask[:, : height // 2, width // 2:] = 1.0
    return mask


# ---------------------------------------------------------------- exactness and what is stored
def test_recording_leaves_sampling_bit_identical_and_stores_each_calls_code(sdxl, sae):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 64, 64)
    base = sample(sdxl, pos, neg, latent, steps=2)
    recorded, recording = record(sdxl, sae)
    probe = BlockProbe(recorded, BLOCK)  # outermost: sees what the recorder saw
    assert torch.equal(sample(probe.model, pos, neg, latent, steps=2), base)
    assert torch.equal(sample(sdxl, pos, neg, latent, steps=2), base)
    assert len(recording.calls) == len(probe.calls) == 2
    for call, (x, y, kinds) in zip(recording.calls, probe.calls):
        assert call.grid == (16, 16) and call.chunk_kinds == tuple(kinds) == (0,)
        expected = encode(sae, x, y)
        got = sorted(zip(call.indices[0, 5].tolist(), call.values[0, 5].float().tolist()))
        want = sorted(zip(expected.indices[0, 0, 5].tolist(), expected.values[0, 0, 5].tolist()))
        assert [i for i, _ in got] == [i for i, _ in want]
        assert np.allclose([v for _, v in got], [v for _, v in want], rtol=2e-3, atol=1e-3)
    assert [c.step for c in recording.calls] == [0, 1] and recording.run.n_steps == 2
    assert recording.nbytes() == 2 * 256 * 8 * (2 + 2)  # steps x positions x k x (fp16 + int16)


# ---------------------------------------------------------------- a planted feature is found and located
def test_feature_planted_by_a_steer_node_tops_the_list_and_is_hot_inside_its_mask(sdxl, sae):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 64, 96)  # 512 x 768 px: non-square, grid 16 x 24
    mask = top_right_mask(512, 768)
    painted = steer(sdxl, sae, PLANTED, strength=40.0, mask=mask)
    recorded, recording = record(painted, sae)  # after the steer on the same block: sees its edit
    samples = sample(recorded, pos, neg, latent, steps=1)
    table, chart, ids = top(recording, samples, top_n=5)
    assert ids[0] == PLANTED
    assert table.splitlines()[2].split()[:2] == ["1", str(PLANTED)]
    assert table.splitlines()[2].split()[3] == "25.0%"  # the mask covers a quarter of the positions
    assert chart.shape[0] == 1 and chart.shape[-1] == 3

    image = torch.full((1, 512, 768, 3), 0.5)
    heat, heat_mask = SAEFeatureHeatmap.execute(recording, image, features=f"{PLANTED}", columns=1).result
    tile = (heat[0, :512, :768] * 255).round().int()
    inside = torch.zeros(512, 768, dtype=torch.bool)
    inside[:256, 384:] = True
    assert (tile[inside][:, 0] > 150).all() and (tile[inside][:, 2] < 100).all()  # red inside the mask
    assert (tile[~inside] == 128).all()  # outside: the image itself
    assert heat_mask.shape == (1, 512, 768)
    assert heat_mask[0][inside].min() > 0.5 and heat_mask[0][~inside].max() < 0.1

    # the default "top 6" grid and its mask follow the ranking: the first tile is the planted feature
    grid, top_mask = SAEFeatureHeatmap.execute(recording, image).result
    assert grid.shape[1] > 512 and grid.shape[2] == 3 * 768 + 2 * 4
    assert torch.equal(top_mask, heat_mask)


def test_recorder_before_the_steer_sees_the_unedited_block(sdxl, sae):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 64, 64)
    recorded, recording = record(sdxl, sae)
    painted = steer(recorded, sae, PLANTED, strength=40.0, mask=top_right_mask(512, 512))
    unedited_model, unedited = record(sdxl, sae)
    sample(painted, pos, neg, latent, steps=1)
    sample(unedited_model, pos, neg, latent, steps=1)
    assert PLANTED not in top(recording, latent, top_n=3)[2]
    assert torch.equal(recording.calls[0].indices, unedited.calls[0].indices)
    assert torch.equal(recording.calls[0].values, unedited.calls[0].values)


# ---------------------------------------------------------------- passes and batches
def test_cfg_passes_and_batch_items_are_recorded_apart(sdxl, sae):
    pos, neg = random_conditioning(batch=2, seed=3)
    latent = torch.zeros(2, 4, 64, 64)
    # plant the feature in the positive pass of the second image only (a mask per image)
    masks = torch.stack([torch.zeros(512, 512), top_right_mask(512, 512)[0]])
    painted = steer(sdxl, sae, PLANTED, strength=40.0, mask=masks, passes="positive")
    recorded, recording = record(painted, sae)
    probe = BlockProbe(recorded, BLOCK)
    samples = sample(probe.model, pos, neg, latent, steps=2, cfg=4.0)
    assert {c.chunk_kinds for c in recording.calls} <= {(0, 1), (1, 0)}
    for call, (x, y, kinds) in zip(recording.calls, probe.calls):
        assert call.chunk_kinds == tuple(kinds)
        expected = encode(sae, x, y).indices.reshape(4, 256, 8).sort(-1).values
        assert torch.equal(call.indices.long().sort(-1).values, expected)
    assert top(recording, samples, batch_index=1)[2][0] == PLANTED
    assert PLANTED not in top(recording, samples, batch_index=0, top_n=3)[2]
    assert PLANTED not in top(recording, samples, batch_index=1, pass_kind="negative", top_n=3)[2]
    table = top(recording, samples, batch_index=-1, step=1)[0]
    assert table.splitlines()[0].endswith("positive pass, all images, step 1 of 2")
    image = torch.full((2, 512, 512, 3), 0.5)
    heat, mask = SAEFeatureHeatmap.execute(recording, image, features=str(PLANTED)).result
    assert heat.shape[0] == 2 and mask.shape == (2, 512, 512)
    assert mask[1, :256, 256:].min() > 0.5 and mask[1, 256:].max() < 0.1
    chart, steps_table = SAEFeatureTimeline.execute(recording, "top 3", latent={"samples": samples},
                                                    batch_index=1).result
    assert chart.shape[0] == 1 and len(steps_table.splitlines()) == 3  # header + 2 steps
    assert steps_table.splitlines()[0].split()[1] == f"#{PLANTED}"
    # SAE Inspect: the planted feature's footprint as its MASK, and at a pixel of the painted corner the route
    # lists it first, in the positive pass of image 1 only
    footprint, key = inspect(recording, image, mask_features=str(PLANTED), mask_step=-1)
    torch.testing.assert_close(footprint, mask)
    payload = routes.inspections.recording({"id": key})
    assert (payload["passes"], payload["batch"], payload["steps"], payload["grid"]) == \
        (["positive", "negative"], 2, [0, 1], [16, 16])
    def corner(**params: str) -> list[tuple[int, float]]:
        listed = routes.inspections.pixel({"id": key, "x": "400", "y": "100", "step": "1", **params})["features"]
        return [(f["id"], f["activation"]) for f in listed]

    painted = corner(image="1")
    assert painted[0][0] == PLANTED
    # elsewhere it fires at most as weakly as the SAE's own activity, never first
    for params in ({"image": "0"}, {"image": "1", "pass": "negative"}):
        others = corner(**params)
        assert others[0][0] != PLANTED and all(v < painted[0][1] / 2 for f, v in others if f == PLANTED), params


def test_cfg_1_has_no_negative_pass(sdxl, sae):
    pos, neg = random_conditioning()
    recorded, recording = record(sdxl, sae)
    samples = sample(recorded, pos, neg, torch.zeros(1, 4, 64, 64), steps=1, cfg=1.0)
    with pytest.raises(ValueError, match="SAE Top Features: no negative pass was recorded .at cfg 1"):
        top(recording, samples, pass_kind="negative")


# ---------------------------------------------------------------- new runs replace the recording
def test_each_sampling_run_replaces_the_recording(sdxl, sae):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 64, 64)
    recorded, recording = record(sdxl, sae)  # one recorder node, cached and reused across queues
    tables, numbers = [], []
    for seed in (1, 2, 1):
        samples = nodes_sample(recorded, pos, neg, latent, seed)
        tables.append(top(recording, samples)[0])
        numbers.append(recording.run.number)
        assert len(recording.calls) == 2  # this run's two steps only, nothing left from earlier runs
    assert tables[0] != tables[1] and tables[0] == tables[2]
    assert numbers == sorted(set(numbers))
    # a clone of the recorded model (e.g. another patch chained after it) records into the same recording
    chained = steer(recorded, sae, 3, strength=0.0)
    samples = nodes_sample(chained, pos, neg, latent, 2)
    assert top(recording, samples)[0] == tables[1] and recording.run.number == numbers[-1] + 1


def nodes_sample(model, pos, neg, latent, seed):
    return sample(model, pos, neg, latent, steps=2, seed=seed)


# ---------------------------------------------------------------- errors
def test_errors_name_the_node_the_value_and_what_is_valid(sdxl, sae):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 64, 64)
    recorded, recording = record(sdxl, sae)
    with pytest.raises(ValueError, match="SAE Top Features: nothing has been recorded at down.2.1: the sampler "
                                         "has not run with the MODEL from SAE Record Activations"):
        top(recording, latent)
    sample(sdxl, pos, neg, latent, steps=1)  # sampled the plain model: still nothing
    with pytest.raises(ValueError, match="nothing has been recorded"):
        SAEFeatureHeatmap.execute(recording, torch.zeros(1, 512, 512, 3))
    # a later patch replaces the block without calling it: the sampler ran, the block never did
    skipping = recorded.clone()
    skipping.add_object_patch(f"diffusion_model.{BLOCK}.forward", lambda x, context=None, transformer_options={}: x)
    sample(skipping, pos, neg, latent, steps=1)
    with pytest.raises(ValueError, match="SAE Feature Timeline: the sampler ran but never called block down.2.1"):
        SAEFeatureTimeline.execute(recording, latent={"samples": latent})
    samples = sample(recorded, pos, neg, latent, steps=1)
    with pytest.raises(ValueError, match="SAE Top Features: connect the sampler's LATENT"):
        SAETopFeatures.execute(recording)
    with pytest.raises(ValueError,
                       match=r"SAE Feature Heatmap: the IMAGE batch has 2 image\(s\) but the recording has 1"):
        SAEFeatureHeatmap.execute(recording, torch.zeros(2, 512, 512, 3))
    with pytest.raises(ValueError,
                       match="SAE Feature Heatmap: the image is 768x512 px but the recorded block grid is 16x16"):
        SAEFeatureHeatmap.execute(recording, torch.zeros(1, 512, 768, 3))
    with pytest.raises(ValueError, match="SAE Feature Heatmap: feature 256 does not exist: this SAE has 256 features"):
        SAEFeatureHeatmap.execute(recording, torch.zeros(1, 512, 512, 3), features="3, 256")
    with pytest.raises(ValueError, match="SAE Inspect: feature 256 does not exist: this SAE has 256 features"):
        inspect(recording, torch.zeros(1, 512, 512, 3), mask_features="3, 256")
    with pytest.raises(ValueError, match="SAE Inspect: the image is 768x512 px but the recorded block grid is 16x16"):
        inspect(recording, torch.zeros(1, 512, 768, 3))
    with pytest.raises(ValueError, match="SAE Inspect: mask_step -2 is out of range"):
        inspect(recording, torch.zeros(1, 512, 512, 3), mask_step=-2)
    with pytest.raises(ValueError, match="SAE Feature Heatmap: mask_feature 999 does not exist"):
        SAEFeatureHeatmap.execute(recording, torch.zeros(1, 512, 512, 3), mask_feature=999)
    with pytest.raises(ValueError, match=r"SAE Top Features: the LATENT connected \(batch 2, 512x512 px\) is not"):
        top(recording, torch.zeros(2, 4, 64, 64))
    with pytest.raises(ValueError, match=r"SAE Top Features: step 4 was not recorded; recorded steps: 0 \(or -1"):
        top(recording, samples, step=4)
    with pytest.raises(ValueError, match="SAE Record Activations: block 'up.9.9' does not exist"):
        record(sdxl, sae, "up.9.9")
    with pytest.raises(ValueError, match="SAE Record Activations: the SAE has width 128 but block"):
        record(sdxl, sae, "up.1.1")


# ---------------------------------------------------------------- SD1.5, several steps, block-output SAEs
def test_sd15_multi_step_timeline_with_a_block_output_sae():
    sd15 = build_unet("sd15")
    sae = SparseAutoencoder(128, 512, 16, hookpoint="unet.up_blocks.1.attentions.1", input_kind="output")
    sae.reset_parameters(torch.Generator().manual_seed(1))
    pos, neg = random_conditioning(seed=5)
    latent = torch.zeros(1, 4, 32, 48)  # 256 x 384 px
    recorded, recording = record(sd15, sae)
    probe = BlockProbe(recorded, "output_blocks.4.1")
    samples = sample(probe.model, pos, neg, latent, steps=3, cfg=7.0)
    assert sorted({c.step for c in recording.calls}) == [0, 1, 2]
    x, y, kinds = probe.calls[-1]
    expected = sae.encode_topk(y.permute(0, 2, 3, 1)).indices  # the block output itself, not the update
    assert torch.equal(recording.calls[-1].indices.long().sort(-1).values,
                       expected.reshape(2, -1, 16).sort(-1).values)
    assert recording.calls[-1].grid == (8, 12)
    for pass_kind in ("positive", "negative"):
        chart, table = SAEFeatureTimeline.execute(recording, "top 4", pass_kind=pass_kind,
                                                  latent={"samples": samples}).result
        rows = table.splitlines()
        assert len(rows) == 4 and [r.split()[0] for r in rows[1:]] == ["0", "1", "2"]
        assert chart.shape[-1] == 3 and chart.std() > 0
    heat, mask = SAEFeatureHeatmap.execute(recording, torch.full((1, 256, 384, 3), 0.5), features="top 2",
                                           every_step=True, pass_kind="negative").result
    assert heat.shape[2] == 3 * 384 + 2 * 4 and mask.shape == (1, 256, 384)
