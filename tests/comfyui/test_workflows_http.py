"""Every example workflow, run through a live ComfyUI server's HTTP API (/prompt, then /history).

The workflows name real checkpoints and hub SAEs; here CheckpointLoaderSimple is swapped for a
test-only loader of tiny models, and the hub SAEs are pre-placed (tiny, in their published
layout) where Load SAE downloads them, with the server offline.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import comfy_harness  # noqa: F401  (first: skips without COMFYUI_PATH)
from server_harness import saved_images, tiny_prompt, workflow_server

WORKFLOWS = sorted((comfy_harness.REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with workflow_server(tmp_path_factory.mktemp("comfy_base")) as running:
        yield running


def test_pack_loads_and_lists_its_templates(server):
    info = server.object_info
    for node_id in ("SAELoader", "SAEFeatureSteer"):
        assert info[node_id]["python_module"].startswith("custom_nodes.sae-lab")
    templates = server.get("/workflow_templates")
    assert sorted(templates["sae-lab"]) == sorted(p.stem for p in WORKFLOWS)
    assert "sae" in server.get("/models")


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(server, workflow):
    entry = server.run(tiny_prompt(workflow, server.object_info))
    images = saved_images(server, entry)
    assert images, f"{workflow.name} saved no image"
    for image in images:
        assert image.ndim == 3 and image.std() > 0  # a real picture, not a blank


def test_steer_changes_the_image_and_idle_steer_does_not(server):
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sdxl_turbo_paint_feature.json",
                         server.object_info)
    steer_id = next(k for k, v in prompt.items() if v["class_type"] == "SAEFeatureSteer")
    idle = copy.deepcopy(prompt)
    idle[steer_id]["inputs"]["strength"] = 0.0
    bypassed = copy.deepcopy(prompt)
    for node in bypassed.values():  # the sampler takes the unpatched model
        if node["class_type"] == "KSampler":
            node["inputs"]["model"] = bypassed[steer_id]["inputs"]["model"]
    painted, idle_img, plain = (saved_images(server, server.run(p))[0].astype(int) for p in (prompt, idle, bypassed))
    assert np.array_equal(idle_img, plain)
    assert not np.array_equal(painted, plain)


def test_bad_inputs_are_reported_with_the_node_name(server):
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sdxl_turbo_ablate_feature.json",
                         server.object_info)
    steer_id = next(k for k, v in prompt.items() if v["class_type"] == "SAEFeatureSteer")
    missing = copy.deepcopy(prompt)
    del missing[steer_id]["inputs"]["features"]
    status, answer = server.post("/prompt", {"prompt": missing})
    assert status == 400 and steer_id in answer["node_errors"]
    for field, value, message in (
            ("features", "99999", "SAE Feature Steer: feature 99999 does not exist: this SAE has 5120 features"),
            ("block", "up.9.9", "SAE Feature Steer: block 'up.9.9' does not exist in this TinySDXL model")):
        failing = copy.deepcopy(prompt)
        failing[steer_id]["inputs"][field] = value
        with pytest.raises(AssertionError, match=message):
            server.run(failing)


def test_a_choice_not_offered_is_refused_by_the_server_or_the_node(server):
    """0.8+ checks Combo values in /prompt (400, the node in node_errors); older servers leave it to the node."""
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sdxl_turbo_ablate_feature.json",
                         server.object_info)
    steer_id = next(k for k, v in prompt.items() if v["class_type"] == "SAEFeatureSteer")
    prompt[steer_id]["inputs"]["mode"] = "boost"
    if comfy_harness.SERVER_VALIDATES_COMBOS:
        status, answer = server.post("/prompt", {"prompt": prompt})
        assert status == 400 and steer_id in answer["node_errors"]
        assert "mode" in json.dumps(answer["node_errors"][steer_id])
    else:
        with pytest.raises(AssertionError, match="SAE Feature Steer: mode 'boost' is not valid; valid: add, scale"):
            server.run(prompt)
