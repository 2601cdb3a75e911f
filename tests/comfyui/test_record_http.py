"""Re-queue behaviour of the recording through a live ComfyUI server (its real cache, its real executor).

ComfyUI caches SAE Record Activations while its inputs are unchanged, so one Recording object serves
every queue; a changed seed re-runs only the sampler. The tables shown must always follow the latest
sampling run, and an unchanged re-queue must show the same tables again.
"""
from __future__ import annotations

import copy

import pytest

import comfy_harness  # noqa: F401  (first: skips without COMFYUI_PATH)
from server_harness import ComfyServer, tiny_prompt, workflow_server

WORKFLOW = comfy_harness.REPO / "example_workflows" / "sdxl_turbo_explore.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with workflow_server(tmp_path_factory.mktemp("comfy_base_record")) as running:
        yield running


def ids_of(prompt: dict, class_type: str) -> list[str]:
    return sorted((k for k, v in prompt.items() if v["class_type"] == class_type), key=int)


def run(server: ComfyServer, prompt: dict) -> tuple[dict[str, str], set[str]]:
    """The tables Top Features showed, and the nodes ComfyUI served from its cache."""
    entry = server.run(prompt)
    tables = {node: entry["outputs"][node]["text"][0] for node in ids_of(prompt, "SAETopFeatures")}
    cached = next(set(data["nodes"]) for kind, data in entry["status"]["messages"] if kind == "execution_cached")
    return tables, cached


def with_seed(prompt: dict, seed: int) -> dict:
    changed = copy.deepcopy(prompt)
    for node in ids_of(changed, "KSampler"):
        changed[node]["inputs"]["seed"] = seed
    return changed


def test_requeues_always_show_the_latest_sampling_run(server):
    prompt = tiny_prompt(WORKFLOW, server.object_info)
    recorders, (sampler,), tops = (ids_of(prompt, "SAERecordActivations"), ids_of(prompt, "KSampler"),
                                   ids_of(prompt, "SAETopFeatures"))
    assert len(recorders) == 2 and len(tops) == 2

    first, _ = run(server, with_seed(prompt, 1))
    second, cached = run(server, with_seed(prompt, 2))
    assert set(recorders) <= cached and sampler not in cached  # same recording objects, new sampling run
    assert all(first[t] != second[t] for t in tops)
    third, cached = run(server, with_seed(prompt, 1))
    assert set(recorders) <= cached and sampler not in cached
    assert third == first  # the recording follows the run: nothing stale from the seed-2 queue

    again, cached = run(server, with_seed(prompt, 1))  # unchanged re-queue: everything from the cache
    assert set(prompt) <= cached and again == first

    fewer = with_seed(prompt, 1)
    for node in tops:
        fewer[node]["inputs"]["top_n"] = 3
    shorter, cached = run(server, fewer)  # only the reading nodes re-run, on the cached run's recording
    assert sampler in cached and not set(tops) & cached
    for node in tops:
        assert shorter[node].splitlines() == first[node].splitlines()[:5]  # title, header, 3 rows


def test_two_identical_recorder_branches_keep_their_own_runs(server):
    """Two recorder nodes with the same inputs, one per sampler: ComfyUI must not merge them into one."""
    prompt = tiny_prompt(WORKFLOW, server.object_info)
    singles = [run(server, with_seed(prompt, seed))[0] for seed in (1, 2)]
    both = with_seed(prompt, 1)
    renamed = {node: str(1000 + int(node)) for node in prompt}
    for node, copy_id in renamed.items():
        twin = copy.deepcopy(both[node])
        for name, value in twin["inputs"].items():
            if isinstance(value, list) and value[0] in renamed:
                twin["inputs"][name] = [renamed[value[0]], value[1]]
        if twin["class_type"] == "KSampler":
            twin["inputs"]["seed"] = 2
        if twin["class_type"] == "SaveImage":
            twin["inputs"]["filename_prefix"] += "_twin"
        both[copy_id] = twin
    (decode,) = ids_of(prompt, "VAEDecode")
    for node in ids_of(prompt, "SAETopFeatures"):  # each reader also waits for the other branch's sampler
        both[node]["inputs"]["image"] = [renamed[decode], 0]
        both[renamed[node]]["inputs"]["image"] = [decode, 0]
    entry = server.run(both)
    for node in ids_of(prompt, "SAETopFeatures"):
        assert entry["outputs"][node]["text"][0] == singles[0][node]
        assert entry["outputs"][renamed[node]]["text"][0] == singles[1][node]


def test_reading_errors_reach_the_user_with_the_node_name(server):
    prompt = tiny_prompt(WORKFLOW, server.object_info)
    top = ids_of(prompt, "SAETopFeatures")[0]
    prompt[top]["inputs"]["pass_kind"] = "negative"
    with pytest.raises(AssertionError, match=r"SAE Top Features: no negative pass was recorded \(at cfg 1"):
        server.run(prompt)
    heat = ids_of(prompt, "SAEFeatureHeatmap")[0]
    prompt = tiny_prompt(WORKFLOW, server.object_info)
    prompt[heat]["inputs"]["features"] = "12, 5120"
    with pytest.raises(AssertionError, match="SAE Feature Heatmap: feature 5120 does not exist: this SAE has 5120"):
        server.run(prompt)
