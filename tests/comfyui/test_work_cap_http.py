"""The server owner's cap on the sampling one request asks for (SAE_LAB_MAX_WORK), over HTTP on a live server.

A sweep, a concept profile and a collection at exactly the cap run; one image-step over it they are refused before
anything is sampled (within a second of the prompt starting, nothing written), with the node's name, the total and
the cap in the error. On a server started without a cap the same requests run: the setting decides.
"""
from __future__ import annotations

import uuid

import pytest

import comfy_harness  # noqa: F401  (first: skips without COMFYUI_PATH)
from server_harness import ComfyServer, place_hub_saes

CAP = 12
SAE = "bcywinski__SAeUron/unet.up_blocks.1.attentions.1"
SAMPLING = {"cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def base() -> dict:
    return {"1": node("SAELabTestTinyCheckpoint", family="sd15"),
            "2": node("SAELoader", sae_name=SAE, hub_repo="", hub_subfolder="")}


def lines(n: int, word: str) -> str:
    return "\n".join(f"a photo of {word} {i}" for i in range(n))


def profile(target: int, other: int, steps: int) -> dict:
    """target + other images of ``steps`` steps."""
    return {**base(),
            "3": node("SAEConceptProfile", model=["1", 0], clip=["1", 1], sae=["2", 0],
                      target_prompts=lines(target, "zorbly dog"), other_prompts=lines(other, "dog"), name="z",
                      block="", steps=steps, seed=0, batch_size=4, **SAMPLING),
            "4": node("SAESaveConcept", concept=["3", 0], name=f"z{target}_{other}_{steps}", overwrite=True)}


def collection(prompts: int, steps: int, name: str) -> dict:
    return {**base(),
            "3": node("SAECollectActivations", model=["1", 0], clip=["1", 1], prompts=lines(prompts, "cat"),
                      blocks="up.1.1", store="output", dataset_name=name, steps=steps, base_seed=0, passes="positive",
                      dtype="fp16", prompts_per_shard=8, positions_per_image=0, **SAMPLING),
            "4": node("PreviewAny", source=["3", 0])}


def sweep(percentiles: str, multipliers: str, prompts: int, steps: int) -> dict:
    """(1 + settings) runs x prompts images of ``steps`` steps; the concept's own profile is 2 images x 1 step."""
    graph = profile(1, 1, 1)
    graph["5"] = node("SAEUnlearningSweep", model=["1", 0], clip=["1", 1], vae=["1", 2], sae=["2", 0],
                      concept=["3", 0], prompts="\n".join(f"z | a zorbly dog {i}" for i in range(prompts)),
                      negative="", seeds="0", percentiles=percentiles, multipliers=multipliers, steps=steps,
                      batch_size=4, passes="both", cell_size=32, fid=False, **SAMPLING)
    graph["6"] = node("PreviewImage", images=["5", 0])
    return graph


# (name, node id, display name, request at the cap, request one image-step over it, its numbers in the error)
CASES = [
    ("profile", "3", "SAE Concept Profile", lambda: profile(3, 1, 3), lambda: profile(12, 1, 1),
     "12 target + 1 other prompts = 13 images x 1 step = 13 image-steps"),
    ("collection", "3", "SAE Collect Activations", lambda: collection(4, 3, "under"), lambda: collection(13, 1, "over"),
     "13 prompts to collect = 13 images x 1 step = 13 image-steps"),
    ("sweep", "5", "SAE Unlearning Sweep", lambda: sweep("99", "-1", 2, 3),
     lambda: sweep("90, 95, 99", "-1, -2, -3, -4", 1, 1), "13 runs x 1 prompt-seed samples = 13 images x 1 step"),
]


def submit(server: ComfyServer, prompt: dict, timeout: float = 300.0) -> dict:
    status, answer = server.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert status == 200 and not answer.get("node_errors"), answer
    return server.wait(answer["prompt_id"], timeout)


def messages(entry: dict) -> dict:
    return {kind: data for kind, data in entry["status"]["messages"]}


def shown_text(entry: dict, node_id: str) -> str:
    return "\n".join(entry["outputs"][node_id]["text"])


def start(tmp_path_factory, name: str, cap: str):
    folder = tmp_path_factory.mktemp(name)
    place_hub_saes(folder / "models")
    return ComfyServer(folder, env={"HF_HUB_OFFLINE": "1", "SAE_LAB_MAX_WORK": cap})


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    with start(tmp_path_factory, "capped", str(CAP)) as server:
        yield server


@pytest.fixture(scope="module")
def uncapped(tmp_path_factory):
    with start(tmp_path_factory, "uncapped", "none") as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_at_the_cap_runs_and_one_over_is_refused_before_sampling(capped, case):
    name, node_id, display, at_cap, over, numbers = case
    entry = submit(capped, at_cap())
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert f"= {CAP} image-steps" in shown_text(entry, node_id)  # the total is shown on the node

    entry = submit(capped, over())
    events = messages(entry)
    error = events.get("execution_error")
    assert error is not None and error["node_id"] == node_id, entry["status"]
    text = error["exception_message"]
    assert text.startswith(f"{display}: "), text
    assert numbers in text and f"cap of {CAP} image-steps" in text and "SAE_LAB_MAX_WORK" in text, text
    # refused before anything was sampled: the check is all that ran
    assert error["timestamp"] - events["execution_start"]["timestamp"] < 1000, events
    if name == "collection":
        assert not (capped.base / "output" / "sae_datasets" / "over").exists()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_without_a_cap_the_same_request_runs(uncapped, case):
    name, node_id, _, _, over, numbers = case
    entry = submit(uncapped, over())
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert numbers.split(" = ", 1)[1] in shown_text(entry, node_id)
