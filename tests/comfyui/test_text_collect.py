"""SAE Collect Text Activations on ComfyUI's own CLIP objects (tiny SD1.5-style CLIP-L, Flux-style CLIP-L + T5),
then SAE Train on the dataset, SAE Text Steer with the trained SAE, and the text atlas built from the dataset."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_text import CLIP_WIDTH, T5_WIDTH, build_flux_clip, build_sd1_clip, transformers_clip

import comfy.model_management
import nodes as comfy_nodes

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.text_collect import SAECollectTextActivations  # noqa: E402
from sae_lab_pack.nodes.text import SAETextSteer  # noqa: E402
from sae_lab_pack.nodes.train import SAETrain  # noqa: E402
from sae_lab_pack.sae_core.atlas.from_dataset import build_atlas_from_dataset  # noqa: E402
from sae_lab_pack.sae_core.train.dataset import ActivationDatasetWriter  # noqa: E402

PROMPTS = ["a photo of a cat", "a red house by the sea at night", "a dog", "snowy mountains", "an old car"]
LONG = " ".join(["a cat on a sofa"] * 20)  # two chunks of 77 tokens


def use_dataset_folder(monkeypatch, folder) -> None:
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae_datasets", ([str(folder)], set()))


def collect(clip, prompts=PROMPTS, **kw):
    inputs = {"layers": "clip_l.1, clip_l.3", "dataset_name": "text", "dtype": "fp32", "prompts_per_shard": 2,
              "batch_size": 3, **kw}
    with torch.inference_mode():
        return SAECollectTextActivations.execute(clip, "\n".join(prompts), **inputs)


def shards(root, block):
    manifest = json.loads((root / "manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        path = str(root / shard["files"][block])
        with safe_open(path, framework="pt") as handle:
            tokens = json.loads(handle.metadata()["tokens"])
        out.append((load_file(path), tokens))
    return manifest, out


@pytest.fixture(scope="module")
def sd1():
    return build_sd1_clip()


@pytest.fixture(scope="module")
def collected(sd1, tmp_path_factory):
    """One collection read by several tests: 6 prompts (one of two chunks), two layers, 3 shards, batches of 3."""
    folder = tmp_path_factory.mktemp("datasets")
    before = {k: v.clone() for k, v in sd1.cond_stage_model.state_dict().items()}
    plain = comfy_nodes.CLIPTextEncode().encode(sd1, PROMPTS[0])
    with pytest.MonkeyPatch.context() as patch:
        use_dataset_folder(patch, folder)
        out = collect(sd1, PROMPTS + [LONG])
    return {"root": folder / "text", "out": out, "before": before, "plain": plain, "folder": folder}


def _cond(out):
    conditioning = out.result[0] if hasattr(out, "result") else out[0]
    return conditioning[0][0]


def test_rows_are_the_real_tokens_of_each_prompt_as_transformers_computes_them(sd1, collected):
    pytest.importorskip("transformers")
    hf = transformers_clip(sd1)
    model = getattr(hf, "text_model", hf)
    manifest, per_shard = shards(collected["root"], "clip_l.3")
    assert [s["prompts"] for s in manifest["shards"]] == [[0, 2], [2, 4], [4, 6]]
    assert manifest["blocks"]["clip_l.3"]["hookpoint"] == "text_encoder.text_model.encoder.layers.3"
    assert manifest["input_kind"] == "output" and manifest["settings"]["source"] == "text_encoder"
    prompts = manifest["prompts"]
    for tensors, tokens in per_shard:
        assert set(tensors) == {"activations", "prompt", "step", "position", "pass"}
        assert not tensors["step"].any() and not tensors["pass"].any()
        for p in sorted(set(tensors["prompt"].tolist())):
            chunks = sd1.tokenize(prompts[p])["l"]
            ids = torch.tensor([[t[0] for t in chunk] for chunk in chunks])
            with torch.no_grad():
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[4]  # layer 3's output
            end = sd1.tokenizer.clip_l.end_token
            real = [(c, t) for c in range(ids.shape[0]) for t in range(1, int((ids[c] == end).nonzero()[0]))]
            mine = tensors["prompt"] == p
            assert tensors["position"][mine].tolist() == list(range(len(real)))
            expected = torch.stack([hidden[c, t] for c, t in real])
            assert (tensors["activations"][mine] - expected).abs().max() <= 1e-5
            assert "".join(tokens[str(p)]).strip() == prompts[p]  # the token texts read as the prompt
    long_rows = sum(int((t["prompt"] == 5).sum()) for t, _ in per_shard)
    assert long_rows == 20 * 5  # both chunks, no start, end or padding token


def test_the_base_clip_is_bit_identical_after_collecting(sd1, collected):
    assert all(torch.equal(v, collected["before"][k]) for k, v in sd1.cond_stage_model.state_dict().items())
    assert torch.equal(_cond(comfy_nodes.CLIPTextEncode().encode(sd1, PROMPTS[0])), _cond(collected["plain"]))
    assert "6 prompts in 3 shards (3 written now, 0 already done)" in collected["out"].result[1]


def test_special_tokens_add_the_start_and_end_token_rows(sd1, tmp_path, monkeypatch):
    use_dataset_folder(monkeypatch, tmp_path)
    collect(sd1, PROMPTS[:2], layers="clip_l.1", special_tokens=True, dataset_name="special")
    _, per_shard = shards(tmp_path / "special", "clip_l.1")
    (tensors, tokens), = per_shard
    assert tokens["0"][0] == "<|startoftext|>" and tokens["0"][-1].strip() == "<|endoftext|>"
    assert "".join(tokens["0"][1:-1]).strip() == PROMPTS[0]
    assert int((tensors["prompt"] == 0).sum()) == len(tokens["0"])


def test_batches_give_the_rows_of_one_prompt_at_a_time(sd1, tmp_path, monkeypatch, collected):
    use_dataset_folder(monkeypatch, tmp_path)
    collect(sd1, PROMPTS + [LONG], batch_size=1, dataset_name="one")
    for (a, _), (b, _) in zip(shards(tmp_path / "one", "clip_l.1")[1], shards(collected["root"], "clip_l.1")[1]):
        assert torch.equal(a["prompt"], b["prompt"]) and torch.equal(a["position"], b["position"])
        assert (a["activations"] - b["activations"]).abs().max() <= 1e-5


def test_rerun_skips_finished_shards_and_cancel_keeps_them(sd1, tmp_path, monkeypatch):
    use_dataset_folder(monkeypatch, tmp_path)
    encodes = []
    real_encode = type(sd1).encode_from_tokens
    monkeypatch.setattr(type(sd1), "encode_from_tokens", lambda self, *a, **k: encodes.append(1) or
                        real_encode(self, *a, **k))
    real_write = comfy_harness.cancel_after_each_shard(monkeypatch)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            collect(sd1, PROMPTS[:3], batch_size=8)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    manifest = json.loads((tmp_path / "text" / "manifest.json").read_text())
    assert [s["index"] for s in manifest["shards"]] == [0] and len(encodes) == 1
    monkeypatch.setattr(ActivationDatasetWriter, "write_shard", real_write)
    assert "1 written now, 1 already done" in collect(sd1, PROMPTS[:3], batch_size=8).result[1]
    assert len(encodes) == 2
    assert "0 written now, 2 already done" in collect(sd1, PROMPTS[:3], batch_size=8).result[1]
    assert len(encodes) == 2
    with pytest.raises(ValueError, match="SAE Collect Text Activations: dataset .* already exists with a different "
                                         "'settings'"):
        collect(sd1, PROMPTS[:3], special_tokens=True)


@pytest.mark.parametrize("kw, message", [
    ({"layers": "clip_l.9"}, r"block 'clip_l.9' does not exist .* valid blocks: clip_l.0"),
    ({"layers": ""}, "no block given"),
    ({"dataset_name": "../x"}, "dataset name '../x' is not a plain folder name"),
    ({"batch_size": 0}, "batch_size"),
    ({"dtype": "int8"}, "dtype"),
])
def test_bad_inputs_name_the_node_and_the_value(sd1, tmp_path, monkeypatch, kw, message):
    use_dataset_folder(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=f"SAE Collect Text Activations: .*{message}"):
        collect(sd1, **kw)
    with pytest.raises(ValueError, match="SAE Collect Text Activations: no prompts given"):
        collect(sd1, prompts=["", "  "])


def test_t5_prompts_of_several_lengths_are_collected_in_batches(tmp_path, monkeypatch):
    flux = build_flux_clip()
    use_dataset_folder(monkeypatch, tmp_path)
    collect(flux, PROMPTS, layers="t5.1, clip_l.0", batch_size=4, prompts_per_shard=8, dataset_name="flux")
    manifest, per_shard = shards(tmp_path / "flux", "t5.1")
    assert manifest["blocks"]["t5.1"]["channels"] == T5_WIDTH
    assert manifest["blocks"]["t5.1"]["hookpoint"] == "text_encoder_2.encoder.block.1"
    (tensors, tokens), = per_shard
    for p, prompt in enumerate(PROMPTS):
        ids = [t[0] for t in flux.tokenize(prompt)["t5xxl"][0]]
        assert int((tensors["prompt"] == p).sum()) == ids.index(1) == len(tokens[str(p)])  # up to the end token
        assert "".join(tokens[str(p)]).strip() == prompt
    assert shards(tmp_path / "flux", "clip_l.0")[1][0][0]["activations"].shape[1] == CLIP_WIDTH


def test_train_then_steer_and_build_the_text_atlas(sd1, collected, tmp_path, monkeypatch, sae_models_dir):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    use_dataset_folder(monkeypatch, collected["folder"])
    with torch.inference_mode():
        sae, _, info = SAETrain.execute("text", name="text_sae", latents=64, k=4, activation="topk", batch_size=64,
                                        steps=30, learning_rate=1e-3, init_seed=0, resume=False, block="clip_l.3",
                                        log_every=10).result
    assert sae.d_in == CLIP_WIDTH and sae.hookpoint == "text_encoder.text_model.encoder.layers.3"
    assert sae.model_family == "clip_l"  # the encoder, as Load SAE names a text SAE's family
    assert sae.has_stats and "FVU" in info
    steered = SAETextSteer.execute(sd1, sae, mode="add", features=str(int(sae.feature_firing_rate.argmax())),
                                   strength=5.0).result[0]  # layer "" resolves the SAE's own hookpoint
    plain = _cond(comfy_nodes.CLIPTextEncode().encode(sd1, PROMPTS[0]))
    assert not torch.equal(_cond(comfy_nodes.CLIPTextEncode().encode(steered, PROMPTS[0])), plain)

    atlas = build_atlas_from_dataset(collected["root"], sae, tmp_path / "atlas", block="clip_l.3", top_n=3)
    assert atlas.meta["text"] is True and atlas.next_id == 6
    manifest, per_shard = shards(collected["root"], "clip_l.3")
    peaks = torch.zeros(6, sae.n_latents)
    for tensors, _ in per_shard:
        with torch.no_grad():
            z = sae.encode(tensors["activations"].float())  # dense top-k code
        for p in set(tensors["prompt"].tolist()):
            peaks[p] = z[tensors["prompt"] == p].max(0).values
    feature = int(peaks.max(0).values.argmax())
    detail = atlas.feature(feature)
    best = int(peaks[:, feature].argmax())
    assert detail["examples"][0]["prompt"] == manifest["prompts"][best]
    assert abs(detail["examples"][0]["score"] - float(peaks[best, feature])) <= 1e-2 * float(peaks[best, feature])
    tokens = detail["examples"][0]["tokens"]
    assert "".join(tokens).strip() == manifest["prompts"][best]
    assert atlas.top_token(feature) == tokens[int(torch.tensor(detail["examples"][0]["map"][0]).argmax())]
    again = build_atlas_from_dataset(collected["root"], sae, tmp_path / "atlas", block="clip_l.3", top_n=3)
    assert again.next_id == 6  # every shard was added already


def test_a_collection_above_the_servers_work_cap_is_refused_before_encoding(sd1, tmp_path, monkeypatch):
    use_dataset_folder(monkeypatch, tmp_path)
    monkeypatch.setenv("SAE_LAB_MAX_WORK", "4")
    with pytest.raises(ValueError, match="SAE Collect Text Activations: .*5 prompts"):
        collect(sd1)
    assert not (tmp_path / "text" / "manifest.json").exists() or not json.loads(
        (tmp_path / "text" / "manifest.json").read_text())["shards"]
    monkeypatch.setenv("SAE_LAB_MAX_WORK", "5")
    assert "3 written now" in collect(sd1).result[1]
