"""Every example workflow, run through a live ComfyUI server's HTTP API (/prompt, then /history).

The workflows name real checkpoints and hub SAEs; here the model loaders (CheckpointLoaderSimple, and for
Flux, SD3.5 and Qwen-Image UNETLoader, the CLIP loaders and VAELoader) are swapped for test-only loaders of tiny
models; the DiT workflows' blocks are mapped to the tiny models' blocks at the same depth and their image sizes
shrunk; the SAEs are pre-placed (tiny, in their published layout) where Load SAE downloads them or in
models/sae, with the server offline.
"""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

import comfy_harness  # noqa: F401  (first: skips without COMFYUI_PATH)
from checkpoint_writers import FLUX_UNBOX_REPO
from server_harness import DIT_FAMILIES, DIT_SAES, saved_images, tiny_prompt, workflow_family, workflow_server

from sae_core import load_sae

WORKFLOWS = sorted((comfy_harness.REPO / "example_workflows").glob("*.json"))
DIT_WORKFLOWS = [p for p in WORKFLOWS if workflow_family(p) in DIT_FAMILIES]
FLUX_BUILD = comfy_harness.REPO / "example_workflows" / "flux_schnell_build_and_steer_sae.json"
UNBOX_FLUX = comfy_harness.REPO / "example_workflows" / "flux_schnell_unbox_feature.json"


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


def test_the_dit_workflows_cover_every_family_and_name_real_blocks_and_placed_saes():
    assert {workflow_family(p) for p in DIT_WORKFLOWS} == set(DIT_FAMILIES)
    for path in DIT_WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "SAELoader":
                name, repo = node["widgets_values"][:2]
                assert name in DIT_SAES or repo == FLUX_UNBOX_REPO, \
                    f"{path.name}: place its SAE (server_harness.DIT_SAES or place_hub_saes)"
    flux = json.loads(FLUX_BUILD.read_text())
    collect = next(n for n in flux["nodes"] if n["type"] == "SAECollectActivations")
    assert collect["widgets_values"][1] == "single.9"  # a block of the real Flux.1 (single.0-37), not the tiny one


def test_flux_workflow_writes_its_dataset_and_its_sae(server):
    prompt = tiny_prompt(FLUX_BUILD, server.object_info)
    collect = next(v["inputs"] for v in prompt.values() if v["class_type"] == "SAECollectActivations")
    assert collect["blocks"] == "single.0" and collect["width"] == 256  # mapped to the tiny model
    server.run(prompt)
    dataset = server.base / "output" / "sae_datasets" / "flux_schnell_single9"
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "flux" and manifest["settings"]["positions_per_image"] == 256
    assert manifest["blocks"]["single.0"]["hookpoint"] == "transformer.single_transformer_blocks.0"
    assert manifest["shards"] and all((dataset / f).is_file() for s in manifest["shards"] for f in s["files"].values())
    sae = load_sae(server.base / "models" / "sae" / "flux" / "flux_schnell_single9.safetensors")
    assert (sae.model_family, sae.hookpoint, sae.d_in, sae.n_latents) == (
        "flux", "transformer.single_transformer_blocks.0", 64, 2048)


def test_the_unbox_flux_workflow_paints_the_demo_blocks_and_shows_what_fires(server):
    """flux_schnell_unbox_feature: SAE Feature Steer paints at block 18 and every single block after it (on the tiny
    Flux: double.1 and single.0-2); the recording and its pictures come from block 18 (double.1)."""
    prompt = tiny_prompt(UNBOX_FLUX, server.object_info)
    steer = next(v["inputs"] for v in prompt.values() if v["class_type"] == "SAEFeatureSteer")
    record = next(v["inputs"] for v in prompt.values() if v["class_type"] == "SAERecordActivations")
    assert (steer["block"], record["block"]) == ("double.1, single.0-2", "double.1")
    entry = server.run(prompt)
    saves = {v["inputs"]["filename_prefix"]: k for k, v in prompt.items() if v["class_type"] == "SaveImage"}
    for name in ("sae_flux_unbox_feature", "sae_flux_unbox_top", "sae_flux_unbox_heatmap"):
        [image] = saved_images(server, entry, saves[name])
        assert image.std() > 0, name


def _downstream_of(prompt: dict, source: str, node_id: str) -> bool:
    """Whether ``node_id`` takes its model from ``source`` (directly or through other model nodes)."""
    while node_id is not None:
        if node_id == source:
            return True
        link = prompt[node_id]["inputs"].get("model")
        node_id = link[0] if isinstance(link, list) else None
    return False


@pytest.mark.parametrize("workflow", DIT_WORKFLOWS, ids=[p.stem for p in DIT_WORKFLOWS])
def test_dit_steer_changes_the_image_against_strength_0(server, workflow):
    """The image sampled with the steered model differs from the same graph with the steer's strength at 0."""
    prompt = tiny_prompt(workflow, server.object_info)
    steer_id = next(k for k, v in prompt.items() if v["class_type"] == "SAEFeatureSteer")
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "KSampler"
                   and _downstream_of(prompt, steer_id, k))
    decode = next(k for k, v in prompt.items() if v["class_type"] == "VAEDecode"
                  and v["inputs"]["samples"] == [sampler, 0])
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage"
                and v["inputs"]["images"] == [decode, 0])
    idle = copy.deepcopy(prompt)
    idle[steer_id]["inputs"]["strength"] = 0.0
    steered, plain = (saved_images(server, server.run(p), save) for p in (prompt, idle))
    assert len(steered) == len(plain) == 1 and steered[0].std() > 0 and plain[0].std() > 0
    assert not np.array_equal(steered[0], plain[0])


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


def test_tune_unlearning_workflow_sweeps_scores_and_picks_a_setting(server):
    """The 'tune unlearning' example over HTTP: the sweep's grid is saved at its layout's size, and the scores node
    reports a best setting that is one of the swept ones (the same run as above: ComfyUI serves it from its cache)."""
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sd15_tune_unlearning.json", server.object_info)
    sweep_id = next(k for k, v in prompt.items() if v["class_type"] == "SAEUnlearningSweep")
    scores_id = next(k for k, v in prompt.items() if v["class_type"] == "SAEUnlearningScores")
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    sweep = prompt[sweep_id]["inputs"]
    assert sweep["width"] == 128 and prompt[sweep_id]["inputs"]["classifier"][0] in prompt  # shrunk for tiny models
    entry = server.run(prompt)
    [grid] = saved_images(server, entry, save_id)
    n_prompts, n_p, n_m = len(sweep["prompts"].splitlines()), len(sweep["percentiles"].split(",")), \
        len(sweep["multipliers"].split(","))
    cell = sweep["cell_size"]
    assert grid.shape[1] == 96 + (1 + n_m) * (cell + 4) + 4  # label column, un-edited + one column per multiplier
    assert grid.shape[0] == 30 + n_prompts * (22 + 18 + n_p * (cell + 4) + 4)
    text = "\n".join(entry["outputs"][scores_id]["text"])
    best = re.search(r"Van Gogh: percentile ([\d.]+), multiplier (-?[\d.]+)", text)
    assert best, text[:500]
    assert float(best[1]) in (99.99, 99.999) and float(best[2]) in (-1.0, -10.0, -30.0)
    assert "UA %" in text and "IRA %" in text


def test_text_steer_workflow_changes_the_image_and_idle_does_not(server):
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sd15_text_concept_slider.json",
                         server.object_info)
    steer_id = next(k for k, v in prompt.items() if v["class_type"] == "SAETextSteer")
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    idle = copy.deepcopy(prompt)
    idle[steer_id]["inputs"]["strength"] = 0.0
    for p in (prompt, idle):  # two steps are enough to compare
        next(v for v in p.values() if v["class_type"] == "KSampler")["inputs"]["steps"] = 2
    steered, idle_img = (saved_images(server, server.run(p), save_id)[0].astype(int) for p in (prompt, idle))
    bypassed = copy.deepcopy(idle)
    positive = next(v for v in bypassed.values() if v["class_type"] == "CLIPTextEncode"
                    and v["inputs"]["clip"][0] == steer_id)
    positive["inputs"]["clip"] = bypassed[steer_id]["inputs"]["clip"]  # the input CLIP
    plain = saved_images(server, server.run(bypassed), save_id)[0].astype(int)
    assert np.array_equal(idle_img, plain)
    assert not np.array_equal(steered, plain)


def test_sdxl_text_features_reads_clip_g_and_its_ids_steer_the_image(server):
    """sdxl_text_features: SAE Text Features reads CLIP-G layer 30 of SDXL's two encoders (CLIP-L 24 wide, CLIP-G 40
    on the tiny SDXL CLIP), its ids go into SAE Text Steer, and the steered positive changes the image."""
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sdxl_text_features.json", server.object_info)
    features_id = next(k for k, v in prompt.items() if v["class_type"] == "SAETextFeatures")
    steer_id = next(k for k, v in prompt.items() if v["class_type"] == "SAETextSteer")
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    assert prompt[steer_id]["inputs"]["features"] == [features_id, 2]
    entry = server.run(prompt)
    text = "\n".join(entry["outputs"][features_id]["text"])
    ids = re.search(r"top features: ([\d, ]+)", text)
    assert ids and len(ids[1].split(",")) >= 1 and "lighthouse" in text, text[:500]
    steered = saved_images(server, entry, save_id)[0].astype(int)
    bypassed = copy.deepcopy(prompt)
    positive = next(v for v in bypassed.values() if v["class_type"] == "CLIPTextEncode"
                    and v["inputs"]["clip"][0] == steer_id)
    positive["inputs"]["clip"] = bypassed[steer_id]["inputs"]["clip"]  # the input CLIP
    assert not np.array_equal(steered, saved_images(server, server.run(bypassed), save_id)[0].astype(int))


def test_collect_text_train_workflow_writes_a_text_dataset_and_an_sae_of_that_layer(server):
    prompt = tiny_prompt(comfy_harness.REPO / "example_workflows" / "sd15_collect_text_train.json",
                         server.object_info)
    entry = server.run(prompt)
    features_id = next(k for k, v in prompt.items() if v["class_type"] == "SAETextFeatures")
    assert "top features:" in "\n".join(entry["outputs"][features_id]["text"])  # the new SAE read a prompt
    dataset = server.base / "output" / "sae_datasets" / "sd15_clip_l9"
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["settings"]["source"] == "text_encoder" and len(manifest["prompts"]) == 8
    assert manifest["blocks"]["clip_l.9"]["hookpoint"] == "text_encoder.text_model.encoder.layers.9"
    assert sum(s["rows"]["clip_l.9"] for s in manifest["shards"]) > 8 * 4  # a row per real token of each prompt
    sae = load_sae(server.base / "models" / "sae" / "text" / "sd15_clip_l9.safetensors")
    assert (sae.hookpoint, sae.model_family, sae.d_in, sae.n_latents, sae.k) == (
        "text_encoder.text_model.encoder.layers.9", "clip_l", 64, 3072, 32)
