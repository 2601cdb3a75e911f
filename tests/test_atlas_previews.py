"""Published feature previews: which atlases have them (a table plus the user's setting), the cache beside the SAE
served offline, the placeholder case, and hub files fetched into models/sae from a cache the test fills."""
from __future__ import annotations

import json

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from sae_core import SAEHubError, SAEInputError, SparseAutoencoder
from sae_core.atlas import previews
from sae_core.atlas.feature_atlas import FeatureAtlas
from sae_core.atlas.label_import import hub_label_file, import_labels
from sae_core.atlas.labels import ImportedLabel
from sae_core.atlas.previews import PreviewCache, PreviewUnavailable, check_setting, parse_source, source_for
from sae_core.atlas.service import AtlasService

PAPER = "surokpro2__sdxl-saes/unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001/final.atlas"
PAPER_META = {"hookpoint": "unet.down_blocks.2.attentions.1", "n_latents": 5120}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_source_lines_parse_and_bad_ones_are_refused():
    source = parse_source("dataset:surokpro2/sdxl_sae_images/{block}/{feature}.jpg")
    assert (source.repo, source.repo_type, source.path_for(4998, "down.2.1")) == (
        "surokpro2/sdxl_sae_images", "dataset", "down.2.1/4998.jpg")
    assert parse_source("me/pics/f{feature}.png").repo_type == "model"
    for bad, message in [("me/pics", "must be \\[dataset:\\]owner/name/path"),
                         ("me/pics/{block}.jpg", "must contain \\{feature\\}"),
                         ("me/pics/{feature}.exe", "must end with one of"),
                         ("me/pics/../{feature}.jpg", "not a valid file name"),
                         ("../x/{feature}.jpg", "not of the form owner/name"),
                         ("me/pics/{feature}{x}.jpg", "must contain \\{feature\\}"),
                         ("me/pics/" + "a" * 400 + "{feature}.jpg", "at most 300")]:
        with pytest.raises(SAEInputError, match=message):
            parse_source(bad)
    assert check_setting("") is None and check_setting(" AUTO ") == "auto" and check_setting("none") == "none"


def test_which_atlases_have_previews_is_data():
    known = source_for(PAPER_META, PAPER)
    assert known.spec == previews.KNOWN_PREVIEWS["surokpro2/sdxl-saes"].source
    assert source_for({**PAPER_META, "hookpoint": "unet.up_blocks.0.attentions.0"}, PAPER) is not None
    assert source_for({**PAPER_META, "hookpoint": "unet.up_blocks.1.attentions.1"}, PAPER) is None  # not published
    assert source_for({**PAPER_META, "n_latents": 20480}, PAPER) is None  # another SAE at that block
    assert source_for(PAPER_META, "mine/x.atlas") is None  # not from that repo
    assert source_for({**PAPER_META, "preview": "none"}, PAPER) is None  # the user turned them off
    mine = source_for({"hookpoint": None, "n_latents": 8, "preview": "me/pics/{feature}.png"}, "mine/x.atlas")
    assert mine.path_for(3, "") == "3.png"


def _paper_atlas(root, previewed: dict[int, tuple[int, int, int]]):
    """A labels-only atlas beside the paper's down.2.1 SAE, with some previews already downloaded."""
    folder = root / PAPER
    FeatureAtlas(5120, top_n=2, meta={"name": "down.2.1", **PAPER_META}).save(folder)
    for feature, color in previewed.items():
        target = folder / "previews" / "down.2.1" / f"{feature}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), color).save(target)
    return folder


def test_cached_previews_are_served_offline_and_missing_ones_are_unavailable(tmp_path, offline):
    root = tmp_path / "sae"
    _paper_atlas(root, {4998: (250, 10, 10), 4977: (10, 10, 250)})
    service = AtlasService(lambda: [str(root)])
    path = service.preview({"atlas": PAPER, "id": "4998"})
    assert np.asarray(Image.open(path))[16, 16].tolist() == pytest.approx([250, 10, 10], abs=8)
    assert service.preview({"atlas": PAPER, "id": "4977"}).name == "4977.jpg"
    with pytest.raises(PreviewUnavailable, match="offline and not downloaded yet"):
        service.preview({"atlas": PAPER, "id": "12"})
    listing = service.features({"atlas": PAPER, "limit": "10"})
    assert listing["total"] == 5120 and listing["preview"] == {"source": previews.KNOWN_PREVIEWS[
        "surokpro2/sdxl-saes"].source, "online": False}
    assert service.feature({"atlas": PAPER, "id": "3"})["preview"]["online"] is False
    for params, message in [({"id": "5120"}, "between 0 and 5119"), ({"id": "x"}, "must be an integer"),
                            ({"id": "-1"}, "between 0"), ({}, "'id' is required")]:
        with pytest.raises(SAEInputError, match=message):
            service.preview({"atlas": PAPER, **params})


def test_an_atlas_without_a_preview_source_says_so(tmp_path):
    root = tmp_path / "sae"
    FeatureAtlas(16, meta={"hookpoint": "unet.mid_block.attentions.0"}).save(root / "mine.atlas")
    service = AtlasService(lambda: [str(root)])
    assert service.features({"atlas": "mine.atlas"})["preview"] is None
    with pytest.raises(SAEInputError, match="has no preview source"):
        service.preview({"atlas": "mine.atlas", "id": "1"})


def test_a_previews_folder_linking_out_of_the_atlas_is_refused(tmp_path, offline):
    root = tmp_path / "sae"
    folder = _paper_atlas(root, {})
    outside = tmp_path / "outside" / "down.2.1"
    outside.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(outside / "5.jpg")
    (folder / "previews").symlink_to(tmp_path / "outside")
    with pytest.raises(SAEInputError, match="leads outside"):
        AtlasService(lambda: [str(root)]).preview({"atlas": PAPER, "id": "5"})


def test_after_the_hub_is_unreachable_previews_answer_at_once(tmp_path, monkeypatch):
    """One failed connection stops the grid from waiting on the network for every picture, for a while."""
    folder = _paper_atlas(tmp_path / "sae", {})
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        error = SAEHubError("could not get it (ConnectError)")
        error.unreachable = True
        raise error

    monkeypatch.setattr(previews, "download_file", unreachable)
    now = [100.0]
    cache = PreviewCache(offline=lambda: False, retry_after=60.0, clock=lambda: now[0])
    source = source_for(PAPER_META, PAPER)
    with pytest.raises(PreviewUnavailable, match="ConnectError"):
        cache.path(folder, source, 1, "down.2.1")
    assert not cache.hub_reachable()
    with pytest.raises(PreviewUnavailable, match="not reachable a moment ago"):
        cache.path(folder, source, 2, "down.2.1")
    assert len(calls) == 1
    now[0] += 61
    with pytest.raises(PreviewUnavailable):
        cache.path(folder, source, 2, "down.2.1")
    assert len(calls) == 2


def test_hub_label_file_comes_from_models_sae_offline(tmp_path, offline):
    """What the node does: hub files land in models/sae/<owner>__<name> and are used from there offline."""
    local = tmp_path / "models" / "sae" / "someone__labels"
    (local / "sets").mkdir(parents=True)
    (local / "sets" / "mid.0.json").write_text(json.dumps([{"id": 1, "label": "neon sky"}]))
    path = hub_label_file("someone/labels", "sets/mid.0.json", local_dir=local)
    assert path == local / "sets" / "mid.0.json"
    with pytest.raises(SAEHubError, match="could not get sets/up.0.0.json .* \\(offline\\)"):
        hub_label_file("someone/labels", "sets/up.0.0.json", local_dir=local)
    for repo, inside, message in [("someone/labels", "../x.json", "not a valid file name"),
                                  ("someone/labels", "sets/x.bin", "must name a .json or .csv file"),
                                  ("../labels", "x.json", "owner/name")]:
        with pytest.raises(SAEInputError, match=message):
            hub_label_file(repo, inside, local_dir=local)


def test_the_preview_setting_is_kept_with_the_atlas(tmp_path):
    sae = SparseAutoencoder(8, 16, 2, hookpoint="unet.mid_block.attentions.0", name="s")
    sae.reset_parameters(torch.Generator().manual_seed(0))
    folder = tmp_path / "s.atlas"
    report = import_labels(folder, sae, {1: ImportedLabel("sky", source="x")}, "x",
                           preview=check_setting("dataset:me/pics/{block}/{feature}.png"))
    assert report.preview == "dataset:me/pics/{block}/{feature}.png"
    assert FeatureAtlas.load(folder).meta["preview"] == report.preview
    assert import_labels(folder, sae, None, preview=None).preview == report.preview  # empty keeps it
    assert import_labels(folder, sae, None, preview="none").preview.startswith("none")
    assert FeatureAtlas.load(folder).meta["preview"] == "none"
    import_labels(folder, sae, None, preview="auto")
    assert "preview" not in FeatureAtlas.load(folder).meta
    assert FeatureAtlas.load(folder).label(1).text == "sky"


def test_the_first_view_downloads_the_published_preview_beside_the_sae_and_later_views_reuse_it(tmp_path,
                                                                                                monkeypatch):
    folder = _paper_atlas(tmp_path / "sae", {})
    calls = []

    def hub(repo_id, filename, *, repo_type, local_dir, max_bytes):  # what huggingface_hub would fetch
        calls.append((repo_id, filename, repo_type))
        target = local_dir / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (20, 240, 20)).save(target)
        return target

    monkeypatch.setattr(previews, "download_file", hub)
    cache = PreviewCache(offline=lambda: False)
    source = source_for(PAPER_META, PAPER)
    first = cache.path(folder, source, 4998, "down.2.1")
    assert calls == [("surokpro2/sdxl_sae_images", "down.2.1/4998.jpg", "dataset")]
    assert first.is_file() and first.resolve().is_relative_to(folder.resolve())
    assert np.asarray(Image.open(first))[8, 8].tolist() == pytest.approx([20, 240, 20], abs=8)
    assert cache.path(folder, source, 4998, "down.2.1") == first and len(calls) == 1  # served from the folder now
