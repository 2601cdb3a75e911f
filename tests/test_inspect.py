"""The inspector's payload and routes: frames equal the recording's codes, scores count positions, pixels map onto
the grid, and every bad request (unknown id, out-of-range pixel, step or image, huge values) is refused."""
from __future__ import annotations

import factories
import numpy as np
import pytest
import torch

from sae_core.atlas.feature_atlas import FeatureAtlas
from sae_core.atlas.service import AtlasService
from sae_core.blocks.context import CallContext
from sae_core.errors import SAEInputError
from sae_core.observe import analysis, inspect
from sae_core.observe.inspect import decode_frame, footprint_masks, inspect_recording
from sae_core.observe.inspect_service import KEEP_RECORDINGS, MAX_TOP, InspectService, UnknownInspection
from sae_core.observe.recording import Recording

N_LATENTS, K, GRID = 300, 3, (4, 6)
SCHEDULE = (10.0, 5.0, 1.0, 0.0)  # 3 steps


def random_code(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, h, w, K) codes, strongest first, with some zeros (inactive slots), ids distinct per position."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(rows, *GRID, K, generator=g).sort(-1, descending=True).values * 4
    values[..., -1] *= (torch.rand(rows, *GRID, generator=g) > 0.5)
    indices = torch.stack([torch.randperm(N_LATENTS, generator=g)[:K] for _ in range(rows * GRID[0] * GRID[1])])
    return values, indices.reshape(rows, *GRID, K)


@pytest.fixture(scope="module")
def recording() -> Recording:
    """3 steps x (positive, negative) x 2 images; step 1 is called twice (a two-evaluation sampler step)."""
    rec = Recording(factories.tiny_sae(8, N_LATENTS, K), "down.2.1")
    rec.begin_run(n_steps=3, latent_shape=(2, 4, 32, 48))
    for seed, step in enumerate((0, 1, 1, 2)):
        rec.add(CallContext((0, 1), SCHEDULE[step], SCHEDULE), *random_code(4, seed))
    rec.end_run()
    return rec


@pytest.fixture(scope="module")
def inspection(recording):
    return inspect_recording(recording, (32, 48))


def test_every_frame_is_the_recorded_code_of_its_pass_image_and_step(recording, inspection):
    payload = inspection.to_json()
    assert (payload["grid"], payload["steps"], payload["passes"], payload["batch"], payload["k"]) == \
        ([4, 6], [0, 1, 2], ["positive", "negative"], 2, K)
    assert len(payload["frames"]) == 3 * 2 * 2 and payload["id_bytes"] == 2
    for frame in payload["frames"]:
        ids, values = decode_frame(payload, frame)
        expected = analysis.aggregated_code(analysis.select(recording, frame["pass"], frame["image"], frame["step"]),
                                            K)
        exp_values = expected.values.reshape(-1, K).numpy()
        np.testing.assert_allclose(values, exp_values, rtol=1e-3, atol=1e-3)  # float16 on the wire
        fired = exp_values > 0
        np.testing.assert_array_equal(ids[fired], expected.indices.reshape(-1, K).numpy()[fired])
    # a single-row step is the raw recorded code; the two-call step is their mean
    first = recording.calls[0]
    ids, values = decode_frame(payload, payload["frames"][0])  # positive, image 0, step 0
    np.testing.assert_array_equal(ids, first.indices[0].numpy())
    np.testing.assert_allclose(values, first.values[0].float().numpy(), rtol=1e-3)


def test_scores_count_the_positions_where_each_feature_fires(inspection):
    frame = inspection.frame("negative", 1, 2)
    ids, counts = frame.scores()
    dense = np.zeros(N_LATENTS, int)
    for row_ids, row_values in zip(frame.indices.numpy(), frame.values.numpy()):
        for f, v in zip(row_ids, row_values):
            dense[f] += v > 0
    assert ids.tolist() == np.nonzero(dense)[0].tolist() and counts.tolist() == dense[dense > 0].tolist()
    payload = inspection.to_json()
    wire = next(f for f in payload["frames"] if (f["pass"], f["image"], f["step"]) == ("negative", 1, 2))
    import base64
    assert np.frombuffer(base64.b64decode(wire["fired_counts"]), "<u4").tolist() == counts.tolist()
    assert set(inspection.features()) >= set(ids.tolist())


def test_pixels_map_onto_the_grid_and_outside_pixels_are_refused(inspection):
    assert inspection.position(0, 0) == 0
    assert inspection.position(47, 31) == 4 * 6 - 1
    assert inspection.position(8, 8) == 1 * 6 + 1  # 8 px per cell
    for x, y in ((48, 0), (0, 32), (-1, 3)):
        with pytest.raises(SAEInputError, match="outside the 48x32 image"):
            inspection.position(x, y)


def test_an_image_of_another_aspect_ratio_or_too_many_frames_is_refused(recording, monkeypatch):
    with pytest.raises(SAEInputError, match="aspect ratio"):
        inspect_recording(recording, (48, 48))
    monkeypatch.setattr(inspect, "MAX_FRAMES", 5)
    with pytest.raises(SAEInputError, match="12 frames"):
        inspect_recording(recording, (32, 48))
    monkeypatch.setattr(inspect, "MAX_FRAMES", 4096)
    codes = 12 * 24 * K * 6  # 12 frames of 24 positions x K codes, 6 bytes each (float16 value, id)
    monkeypatch.setattr(inspect, "MAX_PAYLOAD_BYTES", codes)
    assert len(inspect_recording(recording, (32, 48)).frames) == 12
    monkeypatch.setattr(inspect, "MAX_PAYLOAD_BYTES", codes - 1)
    with pytest.raises(SAEInputError, match="codes exceed"):
        inspect_recording(recording, (32, 48))


def test_footprint_mask_joins_features_each_by_its_own_peak(recording):
    selection = analysis.select(recording, "positive", 0, 0)
    f1, f2 = (int(f) for f in selection.samples[0].indices[0, :2])
    masks = footprint_masks(recording, [f1, f2], 0, 32, 48)
    maps = analysis.feature_maps(selection, [f1, f2]).numpy()
    expected = np.maximum(*(m / m.max() for m in maps))
    assert masks.shape == (2, 32, 48) and masks.max() == pytest.approx(1.0)
    np.testing.assert_allclose(masks[0][::8, ::8], expected, rtol=1e-5)
    assert not footprint_masks(recording, [], 0, 32, 48).any()


# ---------------------------------------------------------------- the service behind the routes
@pytest.fixture
def service(inspection):
    asked = []

    def labels(atlas, features):
        asked.append(atlas)
        return {f: f"label {f}" for f in features if f % 2 == 0}

    svc = InspectService(labels)
    svc.asked = asked
    svc.key = svc.publish(inspection, "tiny.atlas")
    return svc


def test_the_recording_route_answers_the_payload_with_labels(service, inspection):
    answer = service.recording({"id": service.key})
    assert answer["atlas"] == "tiny.atlas" and len(answer["frames"]) == len(inspection.frames)
    assert answer["labels"] and all(int(f) % 2 == 0 and text == f"label {f}" for f, text in answer["labels"].items())


def test_the_pixel_route_lists_the_features_at_a_pixel(service, inspection):
    answer = service.pixel({"id": service.key, "x": "9", "y": "17", "step": "1", "image": "1", "pass": "negative"})
    frame = inspection.frame("negative", 1, 1)
    position = 2 * 6 + 1
    assert [(f["id"], round(f["activation"], 4)) for f in answer["features"]] == \
        [(f, round(v, 4)) for f, v in frame.features_at(position)]
    ids, counts = frame.scores()
    share = dict(zip(ids.tolist(), counts.tolist()))
    for f in answer["features"]:
        assert f["fraction"] == pytest.approx(share[f["id"]] / 24)
        assert f["label"] == (f"label {f['id']}" if f["id"] % 2 == 0 else "")
    assert len(service.pixel({"id": service.key, "x": "0", "y": "0", "top": "1"})["features"]) <= 1


@pytest.mark.parametrize("params, message", [
    ({"x": "48", "y": "0"}, "'x' must be between 0 and 47"),
    ({"x": "0", "y": "-1"}, "'y' must be between 0 and 31"),
    ({"x": "0", "y": "0", "step": "3"}, "'step' must be between 0 and 2"),
    ({"x": "0", "y": "0", "image": "2"}, "'image' must be between 0 and 1"),
    ({"x": "0", "y": "0", "top": str(MAX_TOP + 1)}, f"'top' must be between 1 and {MAX_TOP}"),
    ({"x": "0", "y": "0", "pass": "both"}, "pass 'both' is not valid"),
    ({"x": "1e3", "y": "0"}, "must be an integer"),
    ({"x": "0" * 300, "y": "0"}, "longer than 256"),
])
def test_bad_pixel_requests_are_refused_saying_what_is_valid(service, params, message):
    with pytest.raises(SAEInputError, match=message):
        service.pixel({"id": service.key, **params})


def test_only_issued_ids_are_served_and_only_the_latest_few_are_kept(service, inspection):
    for bad in ("", "../../etc/passwd", "x" * 10):
        with pytest.raises(SAEInputError, match="must be the id SAE Inspect shows"):
            service.recording({"id": bad})
    with pytest.raises(UnknownInspection, match="no inspected recording"):
        service.recording({"id": "A" * 22})
    first = service.key
    newer = [service.publish(inspection) for _ in range(KEEP_RECORDINGS)]
    with pytest.raises(UnknownInspection):
        service.recording({"id": first})
    assert service.recording({"id": newer[-1]})["labels"] == {}  # no atlas: no labels asked
    assert service.asked == []


def test_labels_come_fresh_from_the_atlas_and_a_removed_atlas_gives_none(tmp_path, inspection):
    root = tmp_path / "sae"
    FeatureAtlas(N_LATENTS, top_n=1, meta={"name": "tiny"}).save(root / "tiny.atlas")
    atlases = AtlasService(lambda: [str(root)])
    service = InspectService(atlases.labels_of)
    key = service.publish(inspection, "tiny.atlas")
    feature = inspection.features()[0]
    assert service.recording({"id": key})["labels"] == {}
    atlases.set_label(f'{{"atlas": "tiny.atlas", "id": {feature}, "label": "fur"}}'.encode())
    assert service.recording({"id": key})["labels"] == {str(feature): "fur"}
    gone = service.publish(inspection, "removed.atlas")
    assert service.recording({"id": gone})["labels"] == {}
