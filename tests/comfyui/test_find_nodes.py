"""SAE Find Features on a concept profile recorded with ComfyUI's sampler (tiny SDXL model), then steering; and by
the labels of the SAE's atlas (no generation), its ids steering the same way."""
from __future__ import annotations

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import BlockProbe, TinyTextEncoder, build_unet, encode, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder, load_sae, save_sae  # noqa: E402
from sae_lab_pack.sae_core.atlas.label_import import import_labels  # noqa: E402
from sae_lab_pack.sae_core.atlas.labels import ImportedLabel  # noqa: E402
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


# ---------------------------------------------------------------- labels mode
LABELS = {40: ("tiger stripes", "object", "high"), 41: ("cartoon style", "composition", "high"),
          42: ("tiger fur", "object", "medium"), 43: ("zebra stripes", "object", "low"),
          44: ("a cartoon tiger", "character", "high"), 45: ("office supplies", "object", "high")}


def labelled_sae(sae, folder):
    save_sae(sae, folder / "t.safetensors")
    loaded = load_sae(folder / "t.safetensors")
    import_labels(folder / "t.atlas", loaded, {f: ImportedLabel(t, c, conf, None, "planted")
                                               for f, (t, c, conf) in LABELS.items()}, "planted")
    return loaded


def test_labels_mode_ranks_by_labels_and_its_ids_steer(setup, sae_models_dir):
    model, sae, _ = setup
    sae = labelled_sae(sae, sae_models_dir)
    ids, table, chart = SAEFindFeatures.execute(None, sae, top_n=3, mode="labels", query="tiger stripes").result
    found = [int(i) for i in ids.split(", ")]
    # "tiger stripes" as a phrase, then whole words (high confidence before medium), never the unrelated labels
    assert found == [40, 44, 42]
    assert "tiger stripes (object, high)" in table and chart.shape[0] == 1 and chart.std() > 0
    assert SAEFindFeatures.execute(None, sae, top_n=5, mode="labels", query="cartoon").result[0] == "41, 44"
    # the ids connect to SAE Feature Steer: exactly those features fire more
    without = block_code(model, sae, "garden")
    after = block_code(SAEFeatureSteer.execute(model, sae, ids, "add", 5.0).result[0], sae, "garden")
    assert (after[found] > without[found]).all()
    # the concept input is not needed in labels mode, and the node shows the links into the atlas
    ui = SAEFindFeatures.execute(sae=sae, mode="labels", query="office").ui
    assert list(ui["sae_lab_features"]) == [45] and list(ui["sae_lab_atlas"]) == ["t.atlas"]


def test_labels_mode_errors(setup, sae_models_dir):
    model, sae, concept = setup
    with pytest.raises(ValueError, match="SAE Find Features: this SAE has no atlas with labels beside it"):
        SAEFindFeatures.execute(None, sae, mode="labels", query="tiger")
    labelled = labelled_sae(sae, sae_models_dir)
    for inputs, message in [({"query": "submarine"}, "no label of this SAE's 6 labelled features matches"),
                            ({"query": ""}, "the query has no words"),
                            ({"query": "x" * 500}, "query has 500 characters"),
                            ({"query": "a\nb"}, "query must be a single line")]:
        with pytest.raises(ValueError, match=f"SAE Find Features: {message}"):
            SAEFindFeatures.execute(None, labelled, mode="labels", **inputs)
    with pytest.raises(ValueError, match="SAE Find Features: mode concept needs a concept profile"):
        SAEFindFeatures.execute(None, labelled)
    with pytest.raises(ValueError, match="SAE Find Features: mode 'text' is not valid"):
        SAEFindFeatures.execute(concept, labelled, mode="text")
