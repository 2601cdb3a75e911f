"""SAE Find Features on a concept profile recorded with ComfyUI's sampler (tiny SDXL model), then steering."""
from __future__ import annotations

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import BlockProbe, TinyTextEncoder, build_unet, encode, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402
from sae_lab_pack.sae_core.observe.concept_profile import ConceptProfile  # noqa: E402
from sae_lab_pack.nodes.find import SAEFindFeatures  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.nodes.unlearn import SAEConceptProfile  # noqa: E402

TE = TinyTextEncoder()
BLOCK = "input_blocks.8.1"
TARGET = ["zebra field", "zebra street", "zebra room", "zebra beach"]
OTHER = ["horse field", "car street", "chair room", "dog beach"]


@pytest.fixture(scope="module")
def setup():
    model = build_unet("sdxl")
    sae = SparseAutoencoder(128, 256, 16, hookpoint="unet.down_blocks.2.attentions.1", input_kind="diff", name="t")
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    sae.set_feature_stats(mean=torch.ones(256))
    concept = SAEConceptProfile.execute(model, TE, sae, "\n".join(TARGET), "\n".join(OTHER), "zebra", "", 1, 1.0,
                                        "euler", "normal", 0, 256, 256, 4).result[0]
    return model, sae, concept


def block_code(model, sae, prompt):
    probe = BlockProbe(model, BLOCK)
    sample(probe.model, encode(TE, prompt), encode(TE, ""), torch.zeros(1, 4, 32, 32), steps=1)
    x, y, _ = probe.calls[0]
    return sae.encode((y - x).permute(0, 2, 3, 1)).detach().mean(dim=(0, 1, 2))


def test_found_features_fire_more_on_the_concept_and_steering_with_them_adds_it(setup):
    model, sae, concept = setup
    ids, table, chart = SAEFindFeatures.execute(concept, sae, top_n=3).result
    found = [int(i) for i in ids.split(", ")]
    assert len(found) == 3 and "difference" in table and chart.shape[0] == 1
    # on unseen prompts, the found features fire more with the concept word than without
    with_word, without = block_code(model, sae, "zebra garden"), block_code(model, sae, "garden")
    assert (with_word[found] > without[found]).sum() >= 2
    # the concept slider: steering a neutral prompt with the found ids moves exactly those features up
    steered = SAEFeatureSteer.execute(model, sae, ids, "add", 5.0).result[0]
    after = block_code(steered, sae, "garden")
    assert (after[found] > without[found]).all()
    # the other direction finds the contrast set's features, disjoint from the target's
    other_ids = SAEFindFeatures.execute(concept, sae, top_n=3, direction="other").result[0]
    assert not set(found) & {int(i) for i in other_ids.split(", ")}


def test_find_features_errors(setup):
    model, sae, concept = setup
    stranger = SparseAutoencoder(128, 256, 16, hookpoint="unet.down_blocks.2.attentions.1", input_kind="diff")
    with pytest.raises(ValueError, match="SAE Find Features: concept 'zebra' was made with another SAE"):
        SAEFindFeatures.execute(concept, stranger)
    flat = ConceptProfile(torch.ones(1, 256), torch.ones(1, 256), 2, 2, (1.0,), sae.identity(),
                          "down_blocks.2.attentions.1", "flat")
    with pytest.raises(ValueError, match="no feature fires more for the target prompts of concept 'flat'"):
        SAEFindFeatures.execute(flat, sae)
