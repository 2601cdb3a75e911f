"""Feature atlas: streaming top-N against brute force, statistics, bounded memory, disk round trip, labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_core import SAEFormatError, SAEInputError, SparseCode
from sae_core.atlas.feature_atlas import (
    Example,
    FeatureAtlas,
    atlas_dir_for,
    list_atlases,
    resolve_atlas_name,
    update_label,
    validate_label,
)

N_LAT, K = 64, 4


def random_code(g: torch.Generator, h=3, w=5) -> SparseCode:
    indices = torch.stack([torch.randperm(N_LAT, generator=g)[:K] for _ in range(h * w)]).reshape(h, w, K)
    values = torch.rand(h, w, K, generator=g) * 3
    values[torch.rand(h, w, K, generator=g) < 0.3] = 0.0  # some kept latents are inactive (ReLU'd to 0)
    return SparseCode(values.half().float(), indices)


def dense_mean(code: SparseCode) -> torch.Tensor:
    z = torch.zeros(*code.values.shape[:2], N_LAT).scatter_add(-1, code.indices.long(), code.values)
    return z.mean(dim=(0, 1))


def test_streaming_top_n_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    codes = [random_code(g, h=2 + i % 3, w=4) for i in range(60)]  # grids of several shapes
    atlas = FeatureAtlas(N_LAT, top_n=5)
    for i, code in enumerate(codes):
        assert atlas.add(Example(code, prompt=f"p{i}", seed=i)) == i
    scores = torch.stack([dense_mean(c) for c in codes])  # (gens, features)
    for f in range(N_LAT):
        ranked = sorted(((float(scores[i, f]), -i) for i in range(len(codes)) if scores[i, f] > 0), reverse=True)[:5]
        expected_gens = [-i for _, i in ranked]
        kept = [g for g in atlas.top_gens[f].tolist() if g >= 0]
        assert kept == expected_gens, f
        assert np.allclose(atlas.top_scores[f, : len(kept)].numpy(), [s for s, _ in ranked], atol=1e-5)


def test_statistics_match_brute_force():
    g = torch.Generator().manual_seed(1)
    codes = [random_code(g) for _ in range(20)]
    atlas = FeatureAtlas(N_LAT, top_n=3)
    for code in codes:
        atlas.add(Example(code))
    dense = torch.cat([torch.zeros(15, N_LAT).scatter_add(-1, c.indices.reshape(15, K).long(), c.values.reshape(15, K))
                       for c in codes])
    active = dense > 0
    assert torch.allclose(atlas.firing_rate(), active.double().mean(0))
    expected_mean = (dense.double() * active).sum(0) / active.sum(0).clamp_min(1)
    assert torch.allclose(atlas.mean_activation(), expected_mean, atol=1e-6)


def test_memory_is_bounded_by_what_the_top_lists_reference():
    g = torch.Generator().manual_seed(2)
    atlas = FeatureAtlas(N_LAT, top_n=2)
    for _ in range(300):
        atlas.add(Example(random_code(g), thumbnail=np.zeros((8, 8, 3), np.uint8)))
    referenced = set(atlas.top_gens[atlas.top_gens >= 0].tolist())
    assert set(atlas.codes) == referenced == set(atlas.generations) == set(atlas.thumbnails)
    assert len(referenced) <= N_LAT * 2 < 300


def test_feature_detail_maps_are_the_feature_activation():
    code = SparseCode(torch.tensor([[[2.0, 1.0], [0.5, 0.0]]]), torch.tensor([[[7, 3], [3, 9]]]))  # 1x2 grid, k 2
    atlas = FeatureAtlas(N_LAT, top_n=2)
    atlas.add(Example(code, prompt="a cat", seed=4))
    detail = atlas.feature(3)
    assert detail["examples"][0]["map"] == [[1.0, 0.5]]
    assert detail["examples"][0]["prompt"] == "a cat" and detail["examples"][0]["score"] == pytest.approx(0.75)
    assert atlas.feature(9)["examples"] == []  # value 0: never fired, never an example
    with pytest.raises(SAEInputError, match="feature 64 does not exist"):
        atlas.feature(64)


def test_round_trip_on_disk(tmp_path):
    g = torch.Generator().manual_seed(3)
    atlas = FeatureAtlas(N_LAT, top_n=3, meta={"name": "tiny", "hookpoint": "unet.mid_block.attentions.0"})
    for i in range(25):
        thumb = np.full((32, 48, 3), i * 10 % 255, np.uint8)
        atlas.add(Example(random_code(g), prompt=f"prompt {i}", seed=i, thumbnail=thumb))
    atlas.set_label(5, "stripes")
    folder = atlas.save(tmp_path / "x.atlas")
    again = FeatureAtlas.load(folder)
    for name in ("top_scores", "top_gens", "active_positions", "activation_sum"):
        assert torch.equal(getattr(again, name), getattr(atlas, name)), name
    assert again.labels == {5: "stripes"} and again.meta == atlas.meta
    assert again.generations == atlas.generations
    for f in range(N_LAT):
        assert again.feature(f) == atlas.feature(f)
    thumbs = {int(p.stem) for p in (folder / "thumbs").glob("*.jpg")}
    assert thumbs == set(atlas.codes)
    # incremental: keep adding to the loaded atlas, save again, stale thumbnails are removed
    for _ in range(25):
        again.add(Example(random_code(g), prompt="more", thumbnail=np.zeros((8, 8, 3), np.uint8)))
    again.save(folder)
    assert {int(p.stem) for p in (folder / "thumbs").glob("*.jpg")} == set(again.codes)
    assert FeatureAtlas.load(folder).next_id == 50


def test_summary_filters_and_sorts():
    atlas = FeatureAtlas(N_LAT, top_n=1)
    atlas.add(Example(SparseCode(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[10, 20]]]))))
    atlas.add(Example(SparseCode(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[10, 30]]]))))
    atlas.set_label(20, "Tiger stripes")
    assert [r["id"] for r in atlas.summary()["features"]] == [10, 20]           # by firing rate
    assert [r["id"] for r in atlas.summary(sort="mean_activation")["features"]] == [20, 10]
    assert [r["id"] for r in atlas.summary(query="tiger")["features"]] == [20]
    assert [r["id"] for r in atlas.summary(query="10")["features"]] == [10]
    assert atlas.summary()["total"] == 2  # feature 30 never fired
    with pytest.raises(SAEInputError, match="sort 'x' is not valid"):
        atlas.summary(sort="x")


@pytest.mark.parametrize("text, message", [
    ("x" * 121, "at most 120 characters"),
    ("two\nlines", "control characters or line breaks"),
    (42, "must be text"),
])
def test_label_validation(text, message):
    with pytest.raises(SAEInputError, match=message):
        validate_label(text)


def test_empty_label_clears():
    atlas = FeatureAtlas(N_LAT)
    atlas.set_label(1, "  fur ")
    assert atlas.labels == {1: "fur"}
    atlas.set_label(1, "")
    assert atlas.labels == {}


def test_bad_inputs(tmp_path):
    atlas = FeatureAtlas(N_LAT)
    with pytest.raises(SAEInputError, match="must be \\(h, w, k\\)"):
        atlas.add(Example(SparseCode(torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.long))))
    with pytest.raises(SAEInputError, match="indices must be in 0..63"):
        atlas.add(Example(SparseCode(torch.ones(1, 1, 1), torch.tensor([[[64]]]))))
    with pytest.raises(SAEFormatError, match="is not a feature atlas"):
        FeatureAtlas.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(SAEFormatError, match="cannot be read as a feature atlas"):
        FeatureAtlas.load(tmp_path)


def test_atlas_folder_sits_beside_the_sae(tmp_path):
    assert atlas_dir_for(tmp_path / "mine.safetensors") == tmp_path / "mine.atlas"
    assert atlas_dir_for(tmp_path / "run" / "final") == tmp_path / "run" / "final.atlas"


def _saved_atlas(folder, n=N_LAT):
    atlas = FeatureAtlas(n, top_n=1)
    atlas.add(Example(SparseCode(torch.tensor([[[1.0]]]), torch.tensor([[[3]]]))))
    return atlas.save(folder)


@pytest.mark.parametrize("name", ["../secret.atlas", "/etc/x.atlas", "a/../../b.atlas", "a\\..\\b.atlas",
                                  "c:/x.atlas", "mine.safetensors", "", "./mine.atlas", "a//b.atlas"])
def test_atlas_names_cannot_leave_the_model_folders(tmp_path, name):
    root = tmp_path / "models" / "sae"
    _saved_atlas(root / "mine.atlas")
    _saved_atlas(tmp_path / "models" / "secret.atlas")
    with pytest.raises(SAEInputError):
        resolve_atlas_name(name, [root])


def test_atlas_listing_and_resolution(tmp_path):
    root = tmp_path / "sae"
    _saved_atlas(root / "mine.atlas")
    _saved_atlas(root / "hub__repo" / "unet.up_blocks.1.attentions.2.atlas")
    names = [a["name"] for a in list_atlases([root, tmp_path / "missing"])]
    assert names == ["hub__repo/unet.up_blocks.1.attentions.2.atlas", "mine.atlas"]
    assert resolve_atlas_name("hub__repo/unet.up_blocks.1.attentions.2.atlas", [root]).is_dir()
    with pytest.raises(SAEInputError, match="no atlas named 'other.atlas'"):
        resolve_atlas_name("other.atlas", [root])


def test_update_label_writes_only_labels(tmp_path):
    folder = _saved_atlas(tmp_path / "mine.atlas")
    tables = (folder / "atlas.safetensors").read_bytes()
    assert update_label(folder, 3, " fur ") == "fur"
    assert FeatureAtlas.load(folder).labels == {3: "fur"}
    assert (folder / "atlas.safetensors").read_bytes() == tables
    update_label(folder, 3, "")
    assert FeatureAtlas.load(folder).labels == {}
    for bad in (64, -1, True, "3"):
        with pytest.raises(SAEInputError, match="does not exist"):
            update_label(folder, bad, "x")
