"""SAE Build Atlas on real sampling runs of the tiny SDXL model: a planted feature's examples and heatmaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import build_unet, build_vae, random_conditioning, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder, load_sae, save_sae  # noqa: E402
from sae_lab_pack.sae_core.atlas.feature_atlas import FeatureAtlas  # noqa: E402
from sae_lab_pack.nodes.atlas import SAEBuildAtlas  # noqa: E402
from sae_lab_pack.nodes.observe import SAERecordActivations  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402

PLANTED = 77


@pytest.fixture(scope="module")
def sdxl():
    return build_unet("sdxl")


@pytest.fixture(scope="module")
def vae():
    return build_vae()


def tiny_sae(seed=0) -> SparseAutoencoder:
    sae = SparseAutoencoder(128, 256, 8, hookpoint="unet.down_blocks.2.attentions.1", input_kind="diff", name="tiny")
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    sae.set_feature_stats(mean=torch.ones(256))
    return sae


def run(model, sae, vae, seed, latent, mask):
    """Paint the planted feature into the mask, record the same block, sample, decode."""
    steered = SAEFeatureSteer.execute(model, sae, str(PLANTED), "add", 40.0, mask=mask).result[0]
    recorded, recording = SAERecordActivations.execute(steered, sae, "").result
    pos, neg = random_conditioning(batch=latent.shape[0], seed=seed)
    samples = sample(recorded, pos, neg, latent, steps=1, seed=seed)
    return recording, vae.decode(samples)


def test_atlas_grows_over_runs_and_shows_the_planted_feature_where_it_was_painted(sdxl, vae, sae_models_dir):
    save_sae(tiny_sae(), sae_models_dir / "tiny.safetensors")
    sae = load_sae(sae_models_dir / "tiny.safetensors")
    latent = torch.zeros(1, 4, 32, 48)  # 256 x 384 px, non-square: an 8 x 12 grid at down.2.1
    mask = torch.zeros(1, 256, 384)
    mask[:, :128, 192:] = 1.0  # top-right quarter
    for seed in (1, 2, 3):
        recording, image = run(sdxl, sae, vae, seed, latent, mask)
        summary = SAEBuildAtlas.execute(recording, sae, image, prompt=f"run {seed}", seed=seed, top_n=2).result[0]
    assert summary.startswith("tiny.atlas: 3 generations seen")
    atlas = FeatureAtlas.load(sae_models_dir / "tiny.atlas")
    assert atlas.meta["fingerprint"] == sae.fingerprint()
    detail = atlas.feature(PLANTED)
    assert len(detail["examples"]) == 2  # top 2 of 3 runs
    assert {e["prompt"] for e in detail["examples"]} <= {"run 1", "run 2", "run 3"}
    heat = np.array(detail["examples"][0]["map"])
    assert heat.shape == (8, 12)
    inside, outside = heat[:4, 6:], np.concatenate([heat[4:].ravel(), heat[:4, :6].ravel()])
    assert inside.min() > 0 and inside.mean() > 5 * max(outside.mean(), 1e-6)
    thumbs = sorted(p.name for p in (sae_models_dir / "tiny.atlas" / "thumbs").glob("*.jpg"))
    assert thumbs and all(int(t[:-4]) in atlas.codes for t in thumbs)
    # the planted feature is among the most frequent features of the atlas
    ranked = [r["id"] for r in atlas.summary(sort="mean_activation")["features"][:3]]
    assert PLANTED in ranked


def test_batch_of_two_adds_two_generations(sdxl, vae, sae_models_dir):
    save_sae(tiny_sae(), sae_models_dir / "tiny.safetensors")
    sae = load_sae(sae_models_dir / "tiny.safetensors")
    recording, image = run(sdxl, sae, vae, 5, torch.zeros(2, 4, 32, 32), torch.ones(1, 32, 32))
    SAEBuildAtlas.execute(recording, sae, image, prompt="pair", seed=10, atlas_name="pairs")
    atlas = FeatureAtlas.load(sae_models_dir / "pairs.atlas")
    assert atlas.next_id == 2
    assert sorted(e["seed"] for e in atlas.feature(PLANTED)["examples"]) == [10, 11]


def test_build_atlas_errors(sdxl, vae, sae_models_dir):
    save_sae(tiny_sae(), sae_models_dir / "tiny.safetensors")
    sae = load_sae(sae_models_dir / "tiny.safetensors")
    recording, image = run(sdxl, sae, vae, 1, torch.zeros(1, 4, 32, 32), torch.ones(1, 32, 32))
    SAEBuildAtlas.execute(recording, sae, image)
    other = tiny_sae(seed=9)
    other.source_path = sae.source_path
    with pytest.raises(ValueError, match="SAE Build Atlas: the atlas .*tiny.atlas was built for another SAE"):
        SAEBuildAtlas.execute(recording, other, image)
    with pytest.raises(ValueError, match="keeps the top 8 examples per feature, not 3"):
        SAEBuildAtlas.execute(recording, sae, image, top_n=3)
    with pytest.raises(ValueError, match="IMAGE batch has 2 image"):
        SAEBuildAtlas.execute(recording, sae, torch.cat([image, image]))
    with pytest.raises(ValueError, match="atlas_name '../x' must be a plain name"):
        SAEBuildAtlas.execute(recording, sae, image, atlas_name="../x")
    unsaved = tiny_sae()
    with pytest.raises(ValueError, match="was not loaded from a file"):
        SAEBuildAtlas.execute(recording, unsaved, image)
    _, empty = SAERecordActivations.execute(sdxl, sae, "").result
    with pytest.raises(ValueError, match="SAE Build Atlas: nothing has been recorded"):
        SAEBuildAtlas.execute(empty, sae, image)
