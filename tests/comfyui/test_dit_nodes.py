"""Every node family on diffusion transformers (tiny Flux, SD3.5-style MMDiT-X and Qwen-Image built with ComfyUI's
classes), inside ComfyUI's real sampler: names, idle exactness, masks on a non-square image, passes at cfg > 1,
batch 2, reference-image and text tokens untouched, chaining with another pack's replacement, recording and
reading, collection -> training -> steering, concept profiles, unlearning, finding features, the atlas, loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from checkpoint_writers import write_saelens, write_sparsify
from tiny_dit import DiTProbe, build_dit, dit_conditioning, image_tokens, sample, with_reference
from tiny_models import TinyTextEncoder

import comfy.model_management

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.atlas import SAEBuildAtlas  # noqa: E402
from sae_lab_pack.nodes.collect import SAECollectActivations  # noqa: E402
from sae_lab_pack.nodes.find import SAEFindFeatures  # noqa: E402
from sae_lab_pack.nodes import routes  # noqa: E402
from sae_lab_pack.nodes.observe import (SAEFeatureHeatmap, SAEFeatureTimeline, SAEInspect,  # noqa: E402
                                        SAERecordActivations, SAETopFeatures)
from sae_lab_pack.nodes.patching import model_block_layout  # noqa: E402
from sae_lab_pack.nodes.sae import SAELoader, SAESave  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.nodes.train import SAETrain  # noqa: E402
from sae_lab_pack.nodes.unlearn import SAEConceptProfile, SAEUnlearnConcept  # noqa: E402
from sae_lab_pack.sae_core import load_sae, save_sae  # noqa: E402

CFG = {"flux": 1.0, "sd3": 3.0, "qwen_image": 3.0}
WIDTH = {"flux": 64, "sd3": 128, "qwen_image": 64}
LATENT = torch.zeros(1, 16, 12, 18)  # 96 x 144 px: a 6 x 9 token grid (not square)
GRID = (6, 9)
TEXT = TinyTextEncoder(context_dim=32, pooled_dim=16)
FIRST_AND_LAST = [("flux", "block.0"), ("flux", "single.2"), ("sd3", "block.1"), ("qwen_image", "block.2")]


@pytest.fixture(scope="module")
def models():
    return {family: build_dit(family) for family in CFG}


def make_sae(family: str, block: str, input_kind: str = "diff", n_latents: int = 96, k: int = 6, seed: int = 0):
    return comfy_harness.tiny_sae(WIDTH[family], n_latents, k, hookpoint=f"transformer.{block}",
                                  input_kind=input_kind, seed=seed, name=f"tiny_{family}", mean=2.0)


def steer(model, sae, features="3, 7", mode="add", strength=20.0, **kwargs):
    return SAEFeatureSteer.execute(model, sae, features, mode, strength, **kwargs).result[0]


def probe_run(model, family, block, positive=None, negative=None, latent=LATENT, cfg=None, steps=1):
    target = model_block_layout(model).resolve(block)
    probe = DiTProbe(model, target.kind, target.index)
    pos, neg = dit_conditioning(family) if positive is None else (positive, negative)
    out = sample(probe.model, pos, neg, latent, steps=steps, cfg=CFG[family] if cfg is None else cfg)
    return probe.calls, out


# ---------------------------------------------------------------- names
def test_layouts_name_every_block_in_every_notation(models):
    flux = model_block_layout(models["flux"])
    assert [b.diffusers for b in flux] == ["transformer_blocks.0", "transformer_blocks.1",
                                           "single_transformer_blocks.0", "single_transformer_blocks.1",
                                           "single_transformer_blocks.2"]
    assert [b.comfy for b in flux][:3] == ["double_blocks.0", "double_blocks.1", "single_blocks.0"]
    same = {flux.resolve(name) for name in ("double_blocks.1", "transformer.transformer_blocks.1", "double.1",
                                            "block.1", "transformer_blocks.1")}
    assert len(same) == 1 and same.pop().kind == "double_block"
    single = flux.resolve("single_blocks.2")
    assert single is flux.resolve("single.2")
    assert (single.kind, single.index, single.channels) == ("single_block", 2, 64)
    sd3 = model_block_layout(models["sd3"])
    assert [b.comfy for b in sd3] == ["joint_blocks.0", "joint_blocks.1"] and sd3.resolve("joint.1").channels == 128
    qwen = model_block_layout(models["qwen_image"])
    assert [b.hookpoint for b in qwen] == [f"transformer.transformer_blocks.{i}" for i in range(3)]
    with pytest.raises(ValueError, match=r"SAE Feature Steer: block 'single.9' does not exist in this TinyFlux "
                                         r"model; valid blocks: block.0 / transformer_blocks.0 / double_blocks.0"):
        steer(models["flux"], make_sae("flux", "single_transformer_blocks.1"), block="single.9")


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("family, block", FIRST_AND_LAST)
def test_idle_patch_is_bit_identical_and_base_model_untouched(models, family, block):
    model = models[family]
    pos, neg = dit_conditioning(family)
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    base = sample(model, pos, neg, LATENT, cfg=CFG[family])
    sae = make_sae(family, model_block_layout(model).resolve(block).diffusers)
    for idle in (steer(model, sae, strength=0.0), steer(model, sae, mode="scale", strength=0.0, passes="both"),
                 steer(model, sae, mask=torch.zeros(1, 96, 144), passes="both")):
        assert torch.equal(sample(idle, pos, neg, LATENT, cfg=CFG[family]), base)
    assert not torch.equal(sample(steer(model, sae, passes="both"), pos, neg, LATENT, cfg=CFG[family]), base)
    assert torch.equal(sample(model, pos, neg, LATENT, cfg=CFG[family]), base)
    for key, value in model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, weights[key]), key


# ---------------------------------------------------------------- where edits act
@pytest.mark.parametrize("family, block", FIRST_AND_LAST)
def test_edits_stay_inside_the_mask_on_a_non_square_grid_and_never_touch_text(models, family, block):
    model = models[family]
    target = model_block_layout(model).resolve(block)
    sae = make_sae(family, target.diffusers)
    mask = torch.zeros(1, 96, 144)
    mask[:, :48, 80:] = 1.0  # the top 3 token rows, the right 4 token columns (16 px tokens)
    base_calls, _ = probe_run(model, family, block)
    calls, _ = probe_run(steer(model, sae, mask=mask, passes="both"), family, block)
    n = GRID[0] * GRID[1]
    inside = torch.zeros(GRID, dtype=torch.bool)
    inside[:3, 5:] = True
    inside = inside.flatten()
    for (_, base_out, _), (_, out, _) in zip(base_calls, calls):
        base_img, base_rest = image_tokens(base_out["img"], target.kind, n)
        img, rest = image_tokens(out["img"], target.kind, n)
        assert torch.equal(img[:, ~inside], base_img[:, ~inside]) and not torch.equal(img[:, inside],
                                                                                       base_img[:, inside])
        assert torch.equal(rest, base_rest)  # text tokens (single blocks) untouched
        if "txt" in out:
            assert torch.equal(out["txt"], base_out["txt"])  # the text stream of double blocks too


@pytest.mark.parametrize("family, block", [("flux", "block.1"), ("flux", "single.0"), ("qwen_image", "block.0")])
def test_reference_image_tokens_are_never_edited(models, family, block):
    model = models[family]
    target = model_block_layout(model).resolve(block)
    pos, neg = dit_conditioning(family)
    ref_shape = (1, 16, 1, 8, 10) if family == "qwen_image" and comfy_harness.COMFYUI_VERSION < (0, 33) \
        else (1, 16, 8, 10)
    pos = with_reference(pos, torch.randn(ref_shape, generator=torch.Generator().manual_seed(1)))
    sae = make_sae(family, target.diffusers)
    base_calls, base = probe_run(model, family, block, pos, neg)
    calls, out = probe_run(steer(model, sae, passes="both"), family, block, pos, neg)
    n, refs = GRID[0] * GRID[1], 4 * 5
    assert base_calls[0][1]["img"].shape[1] >= n + refs  # the reference tokens are in the sequence
    for (_, base_out, _), (_, edited, _) in zip(base_calls, calls):
        base_img, base_rest = image_tokens(base_out["img"], target.kind, n, refs)
        img, rest = image_tokens(edited["img"], target.kind, n, refs)
        assert torch.equal(rest, base_rest) and not torch.equal(img, base_img)
    assert not torch.equal(out, base)


@pytest.mark.parametrize("family", ["sd3", "qwen_image"])
def test_cfg_passes_follow_cond_or_uncond(models, family):
    model = models[family]
    sae = make_sae(family, "transformer_blocks.1")
    base_calls, _ = probe_run(model, family, "block.1")
    calls, _ = probe_run(steer(model, sae, passes="positive"), family, "block.1")
    kinds = calls[0][2]
    assert sorted(kinds) == [0, 1]
    rows = calls[0][1]["img"].shape[0] // len(kinds)
    for i, kind in enumerate(kinds):
        chunk = slice(i * rows, (i + 1) * rows)
        assert torch.equal(calls[0][1]["img"][chunk], base_calls[0][1]["img"][chunk]) == (kind == 1)


def test_batch_of_two_with_a_mask_per_image(models):
    model = models["flux"]
    sae = make_sae("flux", "single_transformer_blocks.1")
    masks = torch.zeros(2, 96, 144)
    masks[0, :, :72] = 1.0   # image 0: left half
    masks[1, 48:, :] = 1.0   # image 1: bottom half
    pos, neg = dit_conditioning("flux", batch=2)
    latent = torch.zeros(2, 16, 12, 18)
    base_calls, _ = probe_run(model, "flux", "single.1", pos, neg, latent)
    calls, _ = probe_run(steer(model, sae, mask=masks), "flux", "single.1", pos, neg, latent)
    n = GRID[0] * GRID[1]
    changed = (image_tokens(calls[0][1]["img"], "single_block", n)[0]
               != image_tokens(base_calls[0][1]["img"], "single_block", n)[0]).any(-1).reshape(2, *GRID)
    assert changed[0, :, :4].all() and not changed[0, :, 5:].any()   # column 4 straddles the edge
    assert changed[1, 3:].all() and not changed[1, :3].any()
    with pytest.raises(ValueError, match="SAE Feature Steer: mask batch 3 does not match the latent batch of 2"):
        sample(steer(model, sae, mask=torch.ones(3, 96, 144)), pos, neg, latent)


def test_chains_with_another_packs_block_replacement(models):
    model = models["flux"]
    seen = []

    def other_pack(args, extra):
        seen.append(args["img"].shape)
        return extra["original_block"](args)

    theirs = model.clone()
    theirs.set_model_patch_replace(other_pack, "dit", "double_block", 1)
    pos, neg = dit_conditioning("flux")
    plain = sample(model, pos, neg, LATENT)
    assert torch.equal(sample(theirs, pos, neg, LATENT), plain) and seen
    sae = make_sae("flux", "transformer_blocks.1")
    count = len(seen)
    assert torch.equal(sample(steer(theirs, sae, strength=0.0), pos, neg, LATENT), plain) and len(seen) > count
    assert torch.equal(sample(steer(theirs, sae), pos, neg, LATENT), sample(steer(model, sae), pos, neg, LATENT))


# ---------------------------------------------------------------- see what the SAE sees
def test_record_top_features_heatmap_and_timeline(models):
    model = models["flux"]
    sae = make_sae("flux", "single_transformer_blocks.1", k=4)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)  # every position has features that fire
    recorded, recording = SAERecordActivations.execute(model, sae, "").result
    pos, neg = dit_conditioning("flux")
    latent = sample(recorded, pos, neg, LATENT, steps=2)
    assert {c.grid for c in recording.calls} == {GRID} and len(recording.calls) == 2
    # the recorded code is the SAE's code of the block update at the image tokens
    calls, _ = probe_run(model, "flux", "single.1", steps=2)
    x, out, _ = calls[0]
    n = GRID[0] * GRID[1]
    update = image_tokens(out["img"], "single_block", n)[0] - image_tokens(x, "single_block", n)[0]
    assert float(update.abs().max()) > 0
    code = sae.encode_topk(update.reshape(1, *GRID, -1))
    first = recording.calls[0]
    assert torch.allclose(first.values.float().reshape(1, *GRID, -1).sort(-1).values,
                          code.values.sort(-1).values.half().float(), atol=1e-2)
    table, chart, ids = SAETopFeatures.execute(recording, 5, -1, "positive", 0, {"samples": latent}).result
    assert ids and chart.shape[-1] == 3 and "rank" in table
    image = torch.rand(1, 96, 144, 3)
    heatmaps, mask = SAEFeatureHeatmap.execute(recording, image, "top 2").result
    assert heatmaps.shape[0] == 1 and mask.shape == (1, 96, 144) and float(mask.max()) == pytest.approx(1.0)
    timeline, _ = SAEFeatureTimeline.execute(recording, "top 2", "positive", 0, {"samples": latent}).result
    assert timeline.shape[-1] == 3
    # SAE Inspect on the DiT's non-square token grid: the route's pixel list is the recorded code there
    out = SAEInspect.execute(recording, image, mask_features=ids.split(", ")[0], mask_step=0)
    key = (out.ui if isinstance(out.ui, dict) else out.ui.as_dict())["sae_lab_inspect"][0]["id"]
    payload = routes.inspections.recording({"id": key})
    assert payload["grid"] == list(GRID) and payload["image_size"] == [96, 144] and payload["steps"] == [0, 1]
    listed = routes.inspections.pixel({"id": key, "x": "143", "y": "95", "step": "0"})["features"]
    last = first.values[0].reshape(-1, first.values.shape[-1])[-1].float()
    assert sorted(f["activation"] for f in listed) == pytest.approx(sorted(last[last > 0].tolist()), rel=1e-3)
    assert out.result[0].shape == (1, 96, 144) and float(out.result[0].max()) == pytest.approx(1.0)


def test_build_atlas_on_flux(models, sae_models_dir):
    model = models["flux"]
    sae = make_sae("flux", "transformer_blocks.0", k=4)
    recorded, recording = SAERecordActivations.execute(model, sae, "").result
    pos, neg = dit_conditioning("flux")
    sample(recorded, pos, neg, LATENT)
    summary = SAEBuildAtlas.execute(recording, sae, torch.rand(1, 96, 144, 3), "a fox", 3, 2, -1, "flux_tiny").result[0]
    assert "1 generations seen" in summary and (sae_models_dir / "flux_tiny.atlas" / "index.json").is_file()


# ---------------------------------------------------------------- build your own SAE on Flux
@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch, sae_models_dir):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae_datasets",
                        ([str(tmp_path / "output" / "sae_datasets")], set()))
    comfy.model_management.interrupt_current_processing(False)
    return tmp_path


def test_collect_train_and_steer_on_flux(models, comfy_dirs):
    model = models["flux"]
    with torch.inference_mode():
        name, info = SAECollectActivations.execute(
            model, TEXT, prompts="a fox\na red car\na house by a lake\na cat", blocks="single.1, double.0",
            store="diff", dataset_name="flux_tiny", steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
            base_seed=3, width=144, height=96, passes="positive", dtype="bf16", prompts_per_shard=2,
            positions_per_image=20).result
    root = comfy_dirs / "output" / "sae_datasets" / name
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "flux" and manifest["settings"]["positions_per_image"] == 20
    assert manifest["blocks"]["single.1"]["hookpoint"] == "transformer.single_transformer_blocks.1"
    shard = load_file(str(root / manifest["shards"][0]["files"]["single.1"]))
    assert shard["activations"].dtype == torch.bfloat16 and shard["activations"].shape == (2 * 2 * 20, 64)
    assert manifest["shards"][0]["grid"]["single.1"] == list(GRID)
    # the 20 stored positions of prompt 0, step 0 are the block update there
    probe_model = model_block_layout(model).resolve("single.1")
    probe = DiTProbe(model, probe_model.kind, probe_model.index)
    cond = TEXT.encode_from_tokens_scheduled(TEXT.tokenize("a fox"))
    empty = TEXT.encode_from_tokens_scheduled(TEXT.tokenize(""))
    sample(probe.model, cond, empty, torch.zeros(1, 16, 12, 18), steps=2, seed=3)
    x, out, _ = probe.calls[0]
    n = GRID[0] * GRID[1]
    update = (image_tokens(out["img"], "single_block", n)[0] - image_tokens(x, "single_block", n)[0])[0]
    assert float(update.abs().max()) > 0  # Flux blocks add to their input in place: the update is read before
    positions = shard["position"][:20].long()
    assert positions.unique().numel() == 20 and int(positions.max()) < n
    assert torch.allclose(shard["activations"][:20].float(), update[positions].to(torch.bfloat16).float())
    assert "written now" in info

    with torch.inference_mode():
        sae, _, train_info = SAETrain.execute(name, "flux_sae", latents=128, k=4, activation="topk", batch_size=40,
                                              steps=30, learning_rate=1e-3, init_seed=0, resume=False,
                                              block="single.1", log_every=10).result
    assert sae.hookpoint == "transformer.single_transformer_blocks.1" and sae.model_family == "flux"
    assert sae.input_kind == "diff" and sae.d_in == 64 and "FVU" in train_info
    assert SAESave.execute(sae, "flux/flux_sae").result[0] == "models/sae/flux/flux_sae.safetensors"
    saved = load_sae(comfy_dirs / "sae" / "flux" / "flux_sae.safetensors")
    assert saved.model_family == "flux"
    pos, neg = dit_conditioning("flux")
    fired = str(int(saved.feature_firing_rate.argmax()))
    assert not torch.equal(sample(steer(model, saved, fired), pos, neg, LATENT), sample(model, pos, neg, LATENT))


# ---------------------------------------------------------------- unlearning and finding features on SD3
def test_concept_profile_unlearn_and_find_features_on_sd3(models):
    model = models["sd3"]
    sae = make_sae("sd3", "transformer_blocks.1", input_kind="output", n_latents=256, k=16)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    target = "a painting of a dog in zorbly style\na painting of a house in zorbly style"
    other = "a painting of a dog\na painting of a house"
    with torch.inference_mode():
        profile, preview, chart = SAEConceptProfile.execute(model, TEXT, sae, target, other, "zorbly", "", 3, 3.0,
                                                            "euler", "simple", 0, 144, 96, 2).result
    assert profile.block == "transformer_blocks.1" and profile.n_steps == 3 and chart.shape[-1] == 3
    pos = TEXT.encode_from_tokens_scheduled(TEXT.tokenize("a painting of a cat in zorbly style"))
    neg = TEXT.encode_from_tokens_scheduled(TEXT.tokenize(""))
    base = sample(model, pos, neg, LATENT, steps=3, cfg=3.0)
    unlearned, text, _ = SAEUnlearnConcept.execute(model, sae, profile, percentile=99.0, multiplier=-5.0).result
    assert "zorbly" in text
    assert not torch.equal(sample(unlearned, pos, neg, LATENT, steps=3, cfg=3.0), base)
    ids, table, _ = SAEFindFeatures.execute(profile, sae, 3, "target").result
    assert len(ids.split(",")) >= 1 and "rank" in table
    found = [int(i) for i in ids.split(",")]
    diff = (profile.target_mean - profile.other_mean).mean(0)
    assert found[0] == int(diff.argmax())


# ---------------------------------------------------------------- loading SAEs trained on DiT blocks
def test_dit_saes_load_in_every_format_and_find_their_block(models, sae_models_dir):
    write_sparsify(sae_models_dir / "flux_sparsify", hook="transformer.single_transformer_blocks.2", d=64,
                   expansion=2, k=4)
    write_saelens(sae_models_dir / "flux_saelens", name="double_blocks.1", d=64, n=128, k=4)
    native = make_sae("flux", "transformer_blocks.0")
    native.model_family = "flux"
    save_sae(native, sae_models_dir / "flux_native.safetensors")
    expected = {"flux_sparsify/transformer.single_transformer_blocks.2": "transformer.single_transformer_blocks.2",
                "flux_saelens/double_blocks.1": "transformer.transformer_blocks.1",
                "flux_native.safetensors": "transformer.transformer_blocks.0"}
    pos, neg = dit_conditioning("flux")
    base = sample(models["flux"], pos, neg, LATENT)
    for name, hookpoint in expected.items():
        sae = SAELoader.execute(name).result[0]
        assert sae.hookpoint == hookpoint, name
        edited = sample(steer(models["flux"], sae, "1", passes="both"), pos, neg, LATENT)  # block from the SAE
        assert not torch.equal(edited, base), name
    assert load_sae(sae_models_dir / "flux_native.safetensors").model_family == "flux"
    with pytest.raises(ValueError, match="SAE Feature Steer: the SAE has width 64 but block block.0"):
        steer(models["sd3"], native, block="")
    assert np.isfinite(base.numpy()).all()
