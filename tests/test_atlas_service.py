"""The feature browser's backend: parameters validated, traversal and oversized bodies refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_core import SAEInputError, SparseCode
from sae_core.atlas.feature_atlas import Example, FeatureAtlas
from sae_core.atlas.service import MAX_LABEL_BODY, AtlasService


@pytest.fixture
def service(tmp_path):
    root = tmp_path / "sae"
    atlas = FeatureAtlas(16, top_n=2, meta={"name": "tiny"})
    atlas.add(Example(SparseCode(torch.tensor([[[2.0, 1.0]]]), torch.tensor([[[4, 7]]])), prompt="a tiger",
                      seed=1, thumbnail=np.zeros((20, 20, 3), np.uint8)))
    atlas.save(root / "tiny.atlas")
    (tmp_path / "outside.atlas").mkdir()
    (tmp_path / "outside.atlas" / "index.json").write_text("{}")
    return AtlasService(lambda: [str(root)])


def _body(**data) -> bytes:
    return json.dumps(data).encode()


def test_listing_features_and_detail(service):
    assert [a["name"] for a in service.atlases()["atlases"]] == ["tiny.atlas"]
    rows = service.features({"atlas": "tiny.atlas"})["features"]
    assert [r["id"] for r in rows] == [4, 7]
    detail = service.feature({"atlas": "tiny.atlas", "id": "4"})
    assert detail["examples"][0]["prompt"] == "a tiger" and detail["examples"][0]["map"] == [[2.0]]
    assert service.thumbnail({"atlas": "tiny.atlas", "gen": "0"}).name == "0.jpg"


def test_labels_round_trip_and_show_up_in_search(service):
    assert service.set_label(_body(atlas="tiny.atlas", id=7, label="stripes"))["label"] == "stripes"
    assert [r["id"] for r in service.features({"atlas": "tiny.atlas", "q": "strip"})["features"]] == [7]
    assert service.feature({"atlas": "tiny.atlas", "id": "7"})["label"] == "stripes"


@pytest.mark.parametrize("name", ["../outside.atlas", "/etc/passwd", "tiny.atlas/../../outside.atlas", "tiny"])
def test_traversal_is_refused_everywhere(service, name):
    with pytest.raises(SAEInputError):
        service.features({"atlas": name})
    with pytest.raises(SAEInputError):
        service.set_label(_body(atlas=name, id=1, label="x"))
    with pytest.raises(SAEInputError):
        service.thumbnail({"atlas": name, "gen": "0"})


def test_oversized_and_malformed_bodies_are_refused(service, tmp_path):
    labels = tmp_path / "sae" / "tiny.atlas" / "labels.json"
    before = labels.read_bytes()
    with pytest.raises(SAEInputError, match=f"larger than {MAX_LABEL_BODY}"):
        service.set_label(_body(atlas="tiny.atlas", id=1, label="x" * MAX_LABEL_BODY))
    with pytest.raises(SAEInputError, match="must be JSON"):
        service.set_label(b"{nope")
    with pytest.raises(SAEInputError, match="JSON object"):
        service.set_label(b"[1, 2]")
    with pytest.raises(SAEInputError, match="at most 120 characters"):
        service.set_label(_body(atlas="tiny.atlas", id=1, label="y" * 200))
    assert labels.read_bytes() == before


@pytest.mark.parametrize("params, message", [
    ({"id": "x"}, "'id' must be an integer"),
    ({"id": "16"}, "between 0 and 15"),
    ({}, "'id' is required"),
])
def test_feature_parameters(service, params, message):
    with pytest.raises(SAEInputError, match=message):
        service.feature({"atlas": "tiny.atlas", **params})


def test_thumbnail_ids_are_integers(service):
    with pytest.raises(SAEInputError, match="must be an integer"):
        service.thumbnail({"atlas": "tiny.atlas", "gen": "../../x"})
    with pytest.raises(SAEInputError, match="has no thumbnail"):
        service.thumbnail({"atlas": "tiny.atlas", "gen": "99"})


def test_labels_export_in_both_shapes_and_bad_formats(service):
    from sae_core.atlas.labels import ImportedLabel, write_imported_labels

    write_imported_labels(service.roots()[0] + "/tiny.atlas", {4: ImportedLabel("tiger", "object", "high", 2.5, "set")})
    service.set_label(_body(atlas="tiny.atlas", id=7, label="stripes"))
    text, kind, name = service.labels_file({"atlas": "tiny.atlas", "format": "json"})
    assert kind == "application/json" and name == "tiny.labels.json"
    assert json.loads(text) == [
        {"id": 4, "label": "tiger", "category": "object", "confidence": "high", "meanActivation": 2.5},
        {"id": 7, "label": "stripes", "category": "", "confidence": ""}]
    text, kind, name = service.labels_file({"atlas": "tiny.atlas", "format": "csv"})
    assert kind == "text/csv" and text.splitlines() == ["id,label,category,confidence", "4,tiger,object,high",
                                                        "7,stripes,,"]
    rows = service.features({"atlas": "tiny.atlas", "q": "obj"})["features"]
    assert [(r["id"], r["category"], r["source"]) for r in rows] == [(4, "object", "set")]
    for params in ({"format": "xml"}, {"format": ""}, {"atlas": "../x.atlas"}):
        with pytest.raises(SAEInputError):
            service.labels_file({"atlas": "tiny.atlas", **params})
