"""SAE Build Atlas on real sampling runs of the tiny SDXL model: a planted feature's examples and heatmaps; SAE Import
Labels from ComfyUI's input folder and from a hub repo cached in models/sae."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import build_unet, build_vae, random_conditioning, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder, load_sae, save_sae  # noqa: E402
from sae_lab_pack.sae_core.atlas.feature_atlas import FeatureAtlas  # noqa: E402
from sae_lab_pack.nodes.atlas import SAEBuildAtlas, SAEImportLabels  # noqa: E402
from sae_lab_pack.sae_core.atlas.feature_atlas import update_label  # noqa: E402
from sae_lab_pack.sae_core.atlas.label_import import export_labels  # noqa: E402
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
    return comfy_harness.tiny_sae(hookpoint="unet.down_blocks.2.attentions.1", seed=seed, encoder_gain=3.0, mean=1.0)


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


# ---------------------------------------------------------------- SAE Import Labels
def _input_file(name: str, text: str) -> str:
    """A file in ComfyUI's input folder (the only place the node reads label files from)."""
    import folder_paths

    os.makedirs(folder_paths.get_input_directory(), exist_ok=True)
    with open(os.path.join(folder_paths.get_input_directory(), name), "w") as handle:
        handle.write(text)
    return name


def test_import_labels_from_the_input_folder_then_the_users_label_wins(sae_models_dir):
    save_sae(tiny_sae(), sae_models_dir / "tiny.safetensors")
    sae = load_sae(sae_models_dir / "tiny.safetensors")
    rows = [{"id": 7, "label": "office organization supplies", "category": "object", "confidence": "high",
             "meanActivation": 19.95}, {"id": PLANTED, "label": "red paint", "category": "color", "confidence": "low"}]
    name = _input_file("import_test_down.2.1.json", json.dumps(rows))
    summary = SAEImportLabels.execute(sae, labels_file="import_test_{block}.json").result[0]
    assert summary.startswith("tiny.atlas: new atlas") and "2 labels imported from file " + name in summary
    atlas = FeatureAtlas.load(sae_models_dir / "tiny.atlas")
    assert atlas.next_id == 0 and atlas.label(7).text == "office organization supplies"
    assert atlas.imported[7].source == f"file {name}"
    # the user's label wins; importing again keeps it and says so
    update_label(sae_models_dir / "tiny.atlas", 7, "stationery")
    summary = SAEImportLabels.execute(sae, labels_file=name).result[0]
    assert "1 stay behind labels you wrote" in summary
    assert json.loads(export_labels(sae_models_dir / "tiny.atlas", "json"))[0]["label"] == "stationery"
    # CSV, replacing the earlier imported labels
    csv_name = _input_file("import_test.csv", "id,label,category\n3,fur,object\n")
    SAEImportLabels.execute(sae, labels_file=csv_name, replace_imported=True)
    atlas = FeatureAtlas.load(sae_models_dir / "tiny.atlas")
    assert {f: x.text for f, x in atlas.shown_labels().items()} == {3: "fur", 7: "stationery"}


def test_import_labels_from_a_hub_repo_cached_in_models_sae(sae_models_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    local = sae_models_dir / "someone__sdxl-labels"
    local.mkdir()
    (local / "down.2.1.json").write_text(json.dumps([{"id": 5, "label": "cartoon", "category": "composition"}]))
    save_sae(tiny_sae(), sae_models_dir / "tiny.safetensors")
    sae = load_sae(sae_models_dir / "tiny.safetensors")
    summary = SAEImportLabels.execute(sae, hub_repo="someone/sdxl-labels", hub_path="{block}.json",
                                      preview_source="dataset:someone/pics/{block}/{feature}.jpg").result[0]
    assert "1 labels imported from hub someone/sdxl-labels/down.2.1.json" in summary
    assert "previews: dataset:someone/pics/{block}/{feature}.jpg" in summary
    assert FeatureAtlas.load(sae_models_dir / "tiny.atlas").label(5).category == "composition"
    with pytest.raises(ValueError, match="SAE Import Labels: could not get up.0.0.json .* \\(offline\\)") as info:
        SAEImportLabels.execute(sae, hub_repo="someone/sdxl-labels", hub_path="up.0.0.json")
    assert str(sae_models_dir) not in str(info.value)  # the server's own paths are never shown


def test_import_labels_errors_name_the_node(sae_models_dir):
    save_sae(tiny_sae(), sae_models_dir / "tiny.safetensors")
    sae = load_sae(sae_models_dir / "tiny.safetensors")
    too_big = _input_file("import_test_ids.json", json.dumps([{"id": 256, "label": "x"}]))
    broken = _input_file("import_test_broken.json", "[{")
    for inputs, message in [
        ({"labels_file": too_big}, "id 256 exceeds the SAE's 256 features"),
        ({"labels_file": broken}, "is not valid JSON"),
        ({"labels_file": "missing.json"}, "is not a file in ComfyUI's input folder"),
        ({"labels_file": "../../etc/passwd"}, "not a valid file name"),
        ({"labels_file": too_big, "hub_repo": "a/b"}, "labels_file or hub_repo, not both"),
        ({"hub_repo": "a/b"}, "hub_path is empty"),
        ({"hub_repo_type": "space"}, "hub_repo_type 'space' is not valid"),
        ({"preview_source": "x/y"}, "must be \\[dataset:\\]owner/name/path"),
        ({"atlas_name": "../x"}, "must be a plain name"),
    ]:
        with pytest.raises(ValueError, match=f"^SAE Import Labels: .*{message}"):
            SAEImportLabels.execute(sae, **inputs)
    assert not (sae_models_dir / "tiny.atlas").exists()
