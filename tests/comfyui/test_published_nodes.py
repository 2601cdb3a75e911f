"""Published SAEs through the real nodes: Load SAE with only hub_repo set for a repo whose files are at its root
(antoniomari/SAE_flux_18), and fluxlens SAEs on a tiny Flux: the image stream steers, the text stream is refused."""
from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from checkpoint_writers import FLUX_UNBOX_EXCLUDE, FLUX_UNBOX_REPO, hub_folder, write_fluxlens, write_unbox_flux
from tiny_dit import build_dit, dit_conditioning, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.sae import SAELoader  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402

LATENT = torch.zeros(1, 16, 8, 12)


@pytest.fixture(scope="module")
def flux():
    return build_dit("flux")


def test_load_sae_with_only_hub_repo_reads_a_repo_root_sae(sae_models_dir, monkeypatch):
    """What an (online) download left in models/sae/antoniomari__SAE_flux_18 loads offline with no other input."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    write_unbox_flux(hub_folder(sae_models_dir, FLUX_UNBOX_REPO))
    sae, info = SAELoader.execute("none", FLUX_UNBOX_REPO).result
    assert (sae.hookpoint, sae.model_family, sae.input_kind, sae.stream) == (
        "transformer.transformer_blocks.18", "flux", "diff", "image")
    assert sae.excluded == tuple(sorted(FLUX_UNBOX_EXCLUDE)) and "transformer_blocks.18 of flux" in info
    assert "antoniomari__SAE_flux_18" in SAELoader.define_schema().inputs[0].options


def test_fluxlens_image_stream_steers_and_text_stream_is_refused(flux, sae_models_dir):
    write_fluxlens(hub_folder(sae_models_dir, "RE-N-Y/cc3m-transformer_blocks.0-1"), d=64, pages=256, k=4)
    write_fluxlens(hub_folder(sae_models_dir, "RE-N-Y/cc3m-transformer_blocks.0-0"), d=64, pages=256, k=4)
    image_sae = SAELoader.execute("RE-N-Y__cc3m-transformer_blocks.0-1").result[0]
    assert (image_sae.hookpoint, image_sae.stream, image_sae.input_kind) == (
        "transformer.transformer_blocks.0", "image", "output")
    pos, neg = dit_conditioning("flux")
    base = sample(flux, pos, neg, LATENT)
    idle = SAEFeatureSteer.execute(flux, image_sae, "1", "add", 0.0).result[0]
    assert torch.equal(sample(idle, pos, neg, LATENT), base)
    edited = SAEFeatureSteer.execute(flux, image_sae, "1", "add", 20.0).result[0]
    assert not torch.equal(sample(edited, pos, neg, LATENT), base)
    text_sae = SAELoader.execute("RE-N-Y__cc3m-transformer_blocks.0-0").result[0]
    assert text_sae.stream == "text"
    with pytest.raises(ValueError, match="SAE Feature Steer: this SAE encodes the text stream"):
        SAEFeatureSteer.execute(flux, text_sae, "1", "add", 20.0)
