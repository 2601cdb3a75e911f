"""Every input of every SAE Lab node, and every HTTP route of the pack, fed what a hostile or careless user would
send to a live ComfyUI server: traversal (plain, URL-encoded, absolute, through a link), NaN / +-inf / huge /
negative numbers, empty / huge / binary / NUL text, choices that are not offered.

Each case ends one of two ways, decided per case below: refused (a 400 with the node in node_errors, or an
execution error at that node whose message starts with the node's name), or accepted because the value is
legitimate (listed in ACCEPTED with the reason). Afterwards the server still answers, no file appeared outside
its base directory (nor in the ComfyUI checkout), and the normal workflow gives the same pixels as before.
"""
from __future__ import annotations

import copy
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import comfy_harness  # noqa: F401  (first: skips without COMFYUI_PATH)
from server_harness import TEXT_SAES, ComfyServer, place_hub_saes, place_text_saes, saved_images

from sae_core import load_sae
from sae_core.observe.concept_profile import ConceptProfile

SAE = "bcywinski__SAeUron/unet.up_blocks.1.attentions.1"
DISPLAY = {"SAELoader": "Load SAE", "SAEFeatureSteer": "SAE Feature Steer", "SAERecordActivations":
           "SAE Record Activations", "SAETopFeatures": "SAE Top Features", "SAEFeatureHeatmap": "SAE Feature Heatmap",
           "SAEFeatureTimeline": "SAE Feature Timeline", "SAEBuildAtlas": "SAE Build Atlas",
           "SAEConceptProfile": "SAE Concept Profile", "SAEUnlearnConcept": "SAE Unlearn Concept",
           "SAESaveConcept": "SAE Save Concept", "SAELoadConcept": "SAE Load Concept",
           "SAEFindFeatures": "SAE Find Features", "SAECollectActivations": "SAE Collect Activations",
           "SAETrain": "SAE Train", "SAESave": "SAE Save", "SAEImportLabels": "SAE Import Labels",
           "SAEInspect": "SAE Inspect",
           "SAETextSteer": "SAE Text Steer", "SAETextFeatures": "SAE Text Features", "SAETextErase": "SAE Text Erase",
           "SAECollectTextActivations": "SAE Collect Text Activations",
           "SAEUnlearningAttack": "SAE Unlearning Attack"}
CLIP_L9_SAE, T5_SAE = (f"{run}/final" for run in TEXT_SAES)  # Concept Steerers' layout: CLIP-L 9 (64 wide), T5 (32)
REPEATED = {"30"}  # a second Load SAE (of the text SAE): its inputs are node 5's, tried there


def graph() -> dict:
    """One API-format workflow holding every SAE Lab node, on the tiny SD1.5 model (fast: 64 px, 1-2 steps)."""
    def node(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    return {
        "1": node("SAELabTestTinyCheckpoint", family="sd15"),
        "2": node("CLIPTextEncode", text="a photo of a dog", clip=["1", 1]),
        "3": node("CLIPTextEncode", text="", clip=["1", 1]),
        "4": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "5": node("SAELoader", sae_name=SAE, hub_repo="", hub_subfolder=""),
        "6": node("SAEFeatureSteer", model=["1", 0], sae=["5", 0], features="3, 7:2", mode="add", strength=5.0,
                  block="", start_percent=0.0, end_percent=1.0, passes="positive"),
        "7": node("SAERecordActivations", model=["6", 0], sae=["5", 0], block=""),
        "8": node("KSampler", model=["7", 0], seed=0, steps=2, cfg=2.0, sampler_name="euler", scheduler="normal",
                  positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0),
        "9": node("VAEDecode", samples=["8", 0], vae=["1", 2]),
        "10": node("SaveImage", images=["9", 0], filename_prefix="bad"),
        "11": node("SAETopFeatures", recording=["7", 1], top_n=5, step=-1, pass_kind="positive", batch_index=0,
                   latent=["8", 0]),
        "12": node("SAEFeatureHeatmap", recording=["7", 1], image=["9", 0], features="top 2", step=-1,
                   every_step=False, pass_kind="positive", colormap="jet", opacity=0.6, columns=3, mask_feature=-1,
                   mask_upscale="nearest"),
        "13": node("PreviewImage", images=["12", 0]),
        "14": node("SAEFeatureTimeline", recording=["7", 1], features="top 2", pass_kind="positive", batch_index=0,
                   latent=["8", 0]),
        "15": node("PreviewImage", images=["14", 0]),
        "16": node("SAEBuildAtlas", recording=["7", 1], sae=["5", 0], image=["9", 0], prompt="a dog", seed=0,
                   top_n=2, step=-1, atlas_name="bad_atlas"),
        "17": node("SAEConceptProfile", model=["1", 0], clip=["1", 1], sae=["5", 0], target_prompts="a zorbly dog",
                   other_prompts="a dog", name="z", block="", steps=1, cfg=1.0, sampler_name="euler",
                   scheduler="normal", seed=0, width=64, height=64, batch_size=1),
        "18": node("SAEUnlearnConcept", model=["1", 0], sae=["5", 0], concept=["17", 0], percentile=99.0,
                   multiplier=-1.0, start_percent=0.0, end_percent=1.0, passes="both"),
        "19": node("KSampler", model=["18", 0], seed=0, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
                   positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0),
        "20": node("VAEDecode", samples=["19", 0], vae=["1", 2]),
        "21": node("PreviewImage", images=["20", 0]),
        "22": node("SAESaveConcept", concept=["17", 0], name="z", overwrite=True),
        "23": node("SAELoadConcept", concept_name="pre.safetensors", sae=["5", 0], block=""),
        "24": node("SAEFindFeatures", concept=["23", 0], sae=["5", 0], top_n=3, direction="target", mode="concept",
                   query=""),
        "25": node("SAECollectActivations", model=["1", 0], clip=["1", 1], prompts="a dog", blocks="up.1.1",
                   store="output", dataset_name="bad_ds", steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
                   base_seed=0, width=64, height=64, passes="positive", dtype="fp16", prompts_file="", negative="",
                   prompts_per_shard=1, positions_per_image=0),
        "26": node("SAETrain", dataset=["25", 0], name="bad_sae", latents=64, k=4, activation="topk", batch_size=16,
                   steps=3, learning_rate=0.001, init_seed=0, resume=False, block="", auxk=0, auxk_coef=0.03,
                   dead_tokens=1000, warmup=0.0, decay=0.0, b_dec_init="mean", log_every=1),
        "27": node("SAESave", sae=["26", 0], filename="bad_sae", overwrite=True),
        "28": node("SAEImportLabels", sae=["5", 0], labels_file="labels.csv", hub_repo="", hub_path="",
                   hub_repo_type="dataset", replace_imported=False, atlas_name="bad_labels", preview_source=""),
        # the text nodes, on a real (tiny) ComfyUI CLIP-L of SD1.5's 12 layers at the tiny U-Net's width
        "29": node("SAELabTestTinyTextEncoder", family="sd15_clip"),
        "30": node("SAELoader", sae_name=CLIP_L9_SAE, hub_repo="", hub_subfolder=""),
        "31": node("SAETextErase", clip=["29", 0], sae=["30", 0], target_prompts="a painting in the style of Van Gogh",
                   remain_prompts="a photo of a cat", multiplier=-8.0, top_n=16, layer=""),
        "32": node("SAETextSteer", clip=["31", 0], sae=["30", 0], mode="add", concept="", features="3, 7:2",
                   strength=2.0, layer="", words="dog"),
        "33": node("CLIPTextEncode", text="a photo of a dog", clip=["32", 0]),
        "34": node("KSampler", model=["1", 0], seed=0, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
                   positive=["33", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0),
        "35": node("VAEDecode", samples=["34", 0], vae=["1", 2]),
        "36": node("PreviewImage", images=["35", 0]),
        "37": node("SAETextFeatures", clip=["29", 0], sae=["30", 0], prompt="a photo of a dog", top_k=3, layer=""),
        "38": node("SAECollectTextActivations", clip=["29", 0], prompts="a dog\na cat", layers="clip_l.9",
                   dataset_name="bad_text_ds", dtype="fp16", prompts_file="", special_tokens=False,
                   prompts_per_shard=1, batch_size=2),
        "39": node("PreviewAny", source=["38", 1]),
        "41": node("SAEInspect", recording=["7", 1], image=["9", 0], mask_features="3", mask_step=-1),
        "42": node("SAELabTestTinyCheckpoint", family="sd15_clip"),  # the attack needs a real (tiny) CLIP
        "43": node("SAEUnlearningAttack", model=["42", 0], clip=["42", 1], vae=["42", 2], prompt="a red cat",
                   target_image=["9", 0], tokens=1, iterations=1, learning_rate=0.01, timesteps=1, position="prepend",
                   seed=0, seeds="0", negative="", steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
                   width=64, height=64, concept=""),
    }


def bad_values(kind: str, outside: Path) -> list[tuple[str, object]]:
    if kind == "STRING":
        return [("empty", ""), ("huge", "x" * 100_000), ("binary", "\x01\x02\xff\xfe\x7f"), ("nul", "ok\x00"),
                ("dotdot", "../../outside/x"), ("absolute", str(outside / "x")),
                ("urlencoded", "..%2F..%2Foutside%2Fx")]
    if kind in ("INT", "FLOAT"):
        return [("nan", float("nan")), ("inf", float("inf")), ("-inf", -float("inf")), ("huge", 1e30),
                ("negative", -1e9)]
    if kind == "COMBO":
        return [("not offered", "surely-not-an-option")]
    return []


# (node, input, case) -> why the value is legitimate and the run must succeed. (The collections' prompts and the
# negative prompt are free text too, but any change of them is refused: the dataset in output/sae_datasets already
# holds shards made from the others.)
ACCEPTED = {
    ("SAELoader", "hub_repo", "empty"): "no hub repo: the SAE comes from models/sae",
    ("SAELoader", "hub_subfolder", "empty"): "the whole repo (unused without hub_repo)",
    ("SAELoader", "hub_subfolder", "huge"): "unused without hub_repo",
    ("SAELoader", "hub_subfolder", "binary"): "unused without hub_repo",
    ("SAELoader", "hub_subfolder", "nul"): "unused without hub_repo",
    ("SAELoader", "hub_subfolder", "dotdot"): "unused without hub_repo",
    ("SAELoader", "hub_subfolder", "absolute"): "unused without hub_repo",
    ("SAELoader", "hub_subfolder", "urlencoded"): "unused without hub_repo",
    ("SAEFeatureSteer", "block", "empty"): "the SAE's own block",
    ("SAERecordActivations", "block", "empty"): "the SAE's own block",
    ("SAEBuildAtlas", "prompt", "empty"): "a generation without a prompt",
    **{("SAEBuildAtlas", "prompt", case): "a prompt is free text, stored as text"
       for case in ("binary", "dotdot", "absolute", "urlencoded")},
    ("SAEBuildAtlas", "atlas_name", "empty"): "the atlas goes beside the SAE, inside models/sae",
    ("SAEConceptProfile", "name", "empty"): "named 'concept'",
    **{("SAEConceptProfile", "name", case): "a profile's name is shown, never used as a path"
       for case in ("binary", "dotdot", "absolute", "urlencoded")},
    ("SAEConceptProfile", "block", "empty"): "the SAE's own block",
    **{("SAEConceptProfile", which, case): "a prompt is free text"
       for which in ("target_prompts", "other_prompts") for case in ("binary", "dotdot", "absolute", "urlencoded")},
    ("SAELoadConcept", "block", "empty"): "the profile's own block",
    ("SAECollectActivations", "prompts_file", "empty"): "no prompt file",
    ("SAECollectActivations", "negative", "empty"): "no negative prompt",
    ("SAETrain", "block", "empty"): "the dataset's only block",
    **{("SAEFindFeatures", "query", case): "free text, unused in mode concept"
       for case in ("empty", "binary", "dotdot", "absolute", "urlencoded")},
    ("SAEImportLabels", "labels_file", "empty"): "no file: the atlas and its preview setting only",
    ("SAEImportLabels", "hub_repo", "empty"): "the labels come from labels_file",
    **{("SAEImportLabels", "hub_path", case): "unused without hub_repo"
       for case in ("empty", "huge", "binary", "nul", "dotdot", "absolute", "urlencoded")},
    ("SAEImportLabels", "atlas_name", "empty"): "the atlas goes beside the SAE, inside models/sae",
    ("SAEImportLabels", "preview_source", "empty"): "keeps the atlas's preview setting",
    ("SAEInspect", "mask_features", "empty"): "no features: an empty MASK",
    **{(node, "layer", "empty"): "the SAE's own layer" for node in ("SAETextErase", "SAETextSteer", "SAETextFeatures")},
    **{(node, which, case): "a prompt is free text"
       for node, which in (("SAETextErase", "target_prompts"), ("SAETextErase", "remain_prompts"),
                           ("SAETextFeatures", "prompt"), ("SAETextSteer", "words"))
       for case in ("binary", "dotdot", "absolute", "urlencoded")},
    ("SAETextErase", "remain_prompts", "empty"): "nothing to keep: every top feature of the target is its own",
    ("SAETextSteer", "words", "empty"): "every token of the prompt",
    **{("SAETextSteer", "concept", case): "free text, unused in the feature modes"
       for case in ("empty", "binary", "dotdot", "absolute", "urlencoded")},
    ("SAECollectTextActivations", "prompts_file", "empty"): "no prompt file",
    **{("SAEUnlearningAttack", which, case): "free text (a prompt; the concept is unused without a classifier)"
       for which in ("prompt", "negative", "concept") for case in ("binary", "dotdot", "absolute", "urlencoded")},
    ("SAEUnlearningAttack", "negative", "empty"): "no negative prompt",
    ("SAEUnlearningAttack", "concept", "empty"): "no classifier, no ASR",
}


def submit(server: ComfyServer, prompt: dict, timeout: float = 300.0) -> tuple[str, object]:
    status, answer = server.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    if status == 400 or answer.get("node_errors"):  # 200 + node_errors: the outputs that validate still run
        return "refused", answer.get("node_errors", {})
    assert status == 200, answer
    entry = server.wait(answer["prompt_id"], timeout)
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    return ("failed", errors[0]) if errors else ("done", entry)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    top = tmp_path_factory.mktemp("bad_inputs")
    base, outside = top / "base", top / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not serve me")
    place_hub_saes(base / "models")
    place_text_saes(base / "models")
    sae = load_sae(base / "models" / "sae" / SAE)
    profile = ConceptProfile(torch.rand(1, sae.n_latents), torch.rand(1, sae.n_latents), 1, 1, (14.6,), sae.identity(),
                             "up_blocks.1.attentions.1", "pre")
    profile.save(base / "models" / "sae_concepts" / "pre.safetensors")
    (base / "input").mkdir(parents=True)
    (base / "input" / "binary.txt").write_bytes(bytes(range(256)))
    os.symlink(outside / "secret.txt", base / "input" / "linked.txt")
    (base / "input" / "labels.csv").write_text("id,label,category,confidence\n3,fur,object,high\n7,stripes,,low\n")
    os.symlink(outside, base / "models" / "sae" / "evil.atlas")  # a link out of models/sae
    (outside / "index.json").write_text(json.dumps({"version": 1, "n_latents": 4, "top_n": 1}))
    with ComfyServer(base, env={"HF_HUB_OFFLINE": "1"}) as server:
        yield server, top, base, outside


def test_every_bad_input_of_every_node_is_refused_naming_the_node_or_legitimately_accepted(setup):
    server, top, base, outside = setup
    comfy_files = snapshot(Path(comfy_harness.COMFYUI_PATH))
    started = time.time()
    normal = graph()
    status, entry = submit(server, normal)
    assert status == "done", entry
    before = saved_images(server, entry)[0]

    outcomes, wrong = {}, []
    info = server.object_info
    for node_id, node in graph().items():
        if node["class_type"] not in DISPLAY or node_id in REPEATED:
            continue
        spec = {**info[node["class_type"]]["input"].get("required", {}),
                **info[node["class_type"]]["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            if isinstance(value, list) or name not in spec:
                continue
            kind = "COMBO" if isinstance(spec[name][0], list) or spec[name][0] == "COMBO" else spec[name][0]
            for case, bad in bad_values(kind, outside):
                prompt = copy.deepcopy(normal)
                prompt[node_id]["inputs"][name] = bad
                status, detail = submit(server, prompt)
                key = (node["class_type"], name, case)
                outcomes[key] = status
                expected = "done" if key in ACCEPTED else "refused"
                if status == "refused":
                    ok = expected == "refused" and node_id in detail
                elif status == "failed":
                    ok = expected == "refused" and detail["node_id"] == node_id and \
                        detail["exception_message"].startswith(f"{DISPLAY[node['class_type']]}: ")
                else:
                    ok = expected == "done"
                if not ok:
                    wrong.append((key, status, str(detail)[:300]))
    assert not wrong, "\n".join(map(str, wrong))
    assert len(outcomes) > 250 and sum(s != "done" for s in outcomes.values()) > 200

    # a prompt file is read only from the input folder: not through a link out of it, and not if binary
    for collector in ("25", "38"):
        for value, message in (("linked.txt", "leads outside its folder"), ("binary.txt", "is not UTF-8 text"),
                               (str(outside / "secret.txt"), "is not a valid file name")):
            prompt = copy.deepcopy(normal)
            prompt[collector]["inputs"]["prompts_file"] = value
            status, detail = submit(server, prompt)
            assert status == "failed" and detail["node_id"] == collector, detail
            assert message in detail["exception_message"], detail
            assert str(base) not in detail["exception_message"]  # never the server's own paths

    assert server.get("/object_info/SAELoader")["SAELoader"]["name"] == "SAELoader"  # the server still answers
    assert {p.name for p in top.iterdir()} == {"base", "outside"}
    assert snapshot(outside) == {"secret.txt", "index.json"}
    assert not [f for f in snapshot(Path(comfy_harness.COMFYUI_PATH)) - comfy_files]
    assert not any(p.stat().st_mtime > started for p in outside.rglob("*"))

    post_raw(server, "/free", json.dumps({"unload_models": True, "free_memory": True}).encode())
    status, entry = submit(server, normal)
    assert status == "done"
    assert np.array_equal(saved_images(server, entry)[-1], before)


@pytest.mark.parametrize("node_id", ["31", "32", "37", "38"])
def test_text_nodes_refuse_an_sae_of_another_encoders_width_and_layers_the_clip_lacks(setup, node_id):
    """The tiny SD1.5 CLIP has CLIP-L layers 0-11, 64 wide: a T5 SAE (32 wide), CLIP-L layer 12 and a T5 block are
    refused by the node that reads them, naming it and the valid layers or widths."""
    server = setup[0]
    display = DISPLAY[graph()[node_id]["class_type"]]
    cases = [({"layers": "clip_l.12"}, "clip_l.12"), ({"layers": "t5.22"}, "t5.22")] if node_id == "38" else [
        ({"sae": ["40", 0], "layer": "clip_l.9"}, "the SAE has width 32 but layer clip_l.9"),
        ({"layer": "clip_l.12"}, "clip_l.12"), ({"layer": "t5.22"}, "t5.22")]
    for inputs, message in cases:
        prompt = graph()
        prompt["40"] = {"class_type": "SAELoader", "inputs": {"sae_name": T5_SAE, "hub_repo": "", "hub_subfolder": ""}}
        prompt[node_id]["inputs"].update(inputs)
        status, detail = submit(server, prompt)
        assert status == "failed" and detail["node_id"] == node_id, (inputs, status, str(detail)[:500])
        text = detail["exception_message"]
        assert text.startswith(f"{display}: ") and message in text, text
        assert "clip_l.0" in text or "CLIP-L 64" in text, text  # what is valid


def _answer(status: int, body: bytes) -> tuple[int, dict]:
    """The JSON answer; a refusal from aiohttp itself (e.g. a request line too long) comes as plain text."""
    try:
        return status, json.loads(body or b"{}")
    except json.JSONDecodeError:
        assert status >= 400, body[:200]
        return status, {"error": body.decode(errors="replace")}


def get(server: ComfyServer, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as response:
            return _answer(response.status, response.read())
    except urllib.error.HTTPError as err:
        return _answer(err.code, err.read())


def post_raw(server: ComfyServer, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return _answer(response.status, response.read())
    except urllib.error.HTTPError as err:
        return _answer(err.code, err.read())


ATLAS_NAMES = ["../../outside.atlas", "/etc/passwd.atlas", "..%2F..%2Foutside.atlas", "evil.atlas", "a\x00.atlas",
               "x" * 5000, "", "bad_atlas", "bad_atlas.atlas/../../x.atlas", "C:\\x.atlas"]


@pytest.mark.parametrize("route", ["features", "feature", "thumbnail", "preview", "labels"])
def test_atlas_routes_refuse_bad_names_and_numbers(setup, route):
    server, top, base, outside = setup
    for name in ATLAS_NAMES:
        status, answer = get(server, f"/sae_lab/atlas/{route}?" + urllib.parse.urlencode({"atlas": name, "id": 0,
                                                                                          "gen": 0}))
        assert status in (400, 404) and "error" in answer and str(top) not in answer["error"], (name, answer)
    assert "evil" not in json.dumps(get(server, "/sae_lab/atlas/list")[1])  # a link out of models/sae is not listed
    for query in ({"id": "nan"}, {"id": "1e309"}, {"id": "9" * 5000}, {"id": "-1"}, {"limit": "inf"},
                  {"offset": "-5"}, {"sort": "nope"}, {"q": "x" * 5000}, {"gen": "../1"}):
        status, answer = get(server, f"/sae_lab/atlas/{route}?" + urllib.parse.urlencode({"atlas": "none.atlas",
                                                                                          **query}))
        assert status in (400, 404) and "error" in answer


def test_the_label_route_refuses_bad_bodies(setup):
    server, top, base, outside = setup
    for body in (b"x" * 5000, bytes(range(256)), b"\x00", b"[1, 2]", b'{"atlas": "../../outside.atlas"}',
                 json.dumps({"atlas": "evil.atlas", "id": 0, "label": "x"}).encode(),
                 b'{"atlas": "bad_atlas.atlas", "id": NaN, "label": "x"}',
                 b'{"atlas": "bad_atlas.atlas", "id": 1e309, "label": "x"}',
                 json.dumps({"atlas": "bad_atlas.atlas", "id": 0, "label": "two\nlines"}).encode(),
                 json.dumps({"atlas": "bad_atlas.atlas", "id": 0, "label": "x" * 1000}).encode()):
        status, answer = post_raw(server, "/sae_lab/atlas/label", body)
        assert status in (400, 404, 413) and "error" in answer, (body[:60], status, answer)
    assert snapshot(outside) == {"secret.txt", "index.json"}
    assert get(server, "/sae_lab/atlas/list")[0] == 200


PAPER_RUN = "surokpro2__sdxl-saes/unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001/final"


def test_the_preview_and_labels_routes_refuse_bad_parameters(setup):
    from sae_core.atlas.feature_atlas import FeatureAtlas

    server, top, base, outside = setup
    sae_dir = base / "models" / "sae"
    atlas = f"{PAPER_RUN}.atlas"  # the paper's down.2.1 SAE (placed by place_hub_saes): it has published previews
    FeatureAtlas(5120, meta={"name": "final", "hookpoint": "unet.down_blocks.2.attentions.1", "n_latents": 5120}) \
        .save(sae_dir / atlas)
    for query in ({"id": "5120"}, {"id": "-1"}, {"id": "nan"}, {"id": "1e309"}, {"id": "9" * 5000}, {"id": "../1"},
                  {"id": ""}, {"id": "0x10"}):
        status, answer = get(server, "/sae_lab/atlas/preview?" + urllib.parse.urlencode({"atlas": atlas, **query}))
        assert status == 400 and "error" in answer and str(top) not in answer["error"], (query, answer)
    # offline and not downloaded: a 404 saying so (the sidebar shows a placeholder), and nothing written
    status, answer = get(server, "/sae_lab/atlas/preview?" + urllib.parse.urlencode({"atlas": atlas, "id": 7}))
    assert status == 404 and "offline" in answer["error"] and str(top) not in answer["error"]
    assert not (sae_dir / atlas / "previews").exists()
    # a previews folder that links out of the atlas is not followed
    import shutil

    (outside / "down.2.1").mkdir()
    (outside / "down.2.1" / "7.jpg").write_text("do not serve me")
    os.symlink(outside, sae_dir / atlas / "previews")
    try:
        status, answer = get(server, "/sae_lab/atlas/preview?" + urllib.parse.urlencode({"atlas": atlas, "id": 7}))
        assert status == 400 and "leads outside" in answer["error"] and "do not serve" not in json.dumps(answer)
    finally:
        (sae_dir / atlas / "previews").unlink()
        shutil.rmtree(outside / "down.2.1")
    # an atlas without a preview source
    status, answer = get(server, "/sae_lab/atlas/preview?" + urllib.parse.urlencode({"atlas": "bad_atlas.atlas",
                                                                                     "id": 1}))
    assert status in (400, 404) and "error" in answer
    for fmt in ("xml", "", "../../x", "x" * 5000, "json\x00"):
        status, answer = get(server, "/sae_lab/atlas/labels?" + urllib.parse.urlencode({"atlas": atlas,
                                                                                        "format": fmt}))
        assert status == 400 and "format" in answer["error"], (fmt, answer)
    with urllib.request.urlopen(server.url + "/sae_lab/atlas/labels?" + urllib.parse.urlencode(
            {"atlas": atlas, "format": "csv"}), timeout=30) as response:
        assert response.headers["Content-Disposition"] == 'attachment; filename="final.labels.csv"'
        assert response.read().decode().splitlines() == ["id,label,category,confidence"]
    assert snapshot(outside) == {"secret.txt", "index.json"}
