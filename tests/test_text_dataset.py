"""Text-encoder activation datasets without ComfyUI: which tokens become rows, batching, the recording patch on
plain tensors, and the text atlas built from such a dataset (top prompts and the firing token per feature)."""
from __future__ import annotations

import json

import factories
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sae_core import SAEInputError
from sae_core.atlas.feature_atlas import FeatureAtlas
from sae_core.atlas.from_dataset import build_atlas_from_dataset, build_text_atlas_from_dataset
from sae_core.blocks.context import CallContext
from sae_core.blocks.text_encoder import patched_layer_output
from sae_core.train.collect import collect_shards
from sae_core.train.dataset import ActivationDatasetWriter, read_manifest
from sae_core.train.text_collect import TextCollectPatch, batches, prompt_tokens, token_text

D, N, K, T = 16, 32, 3, 8
START, END, PAD = 90, 91, 0
# prompt -> its words, and which word (token position among its rows) carries which planted feature
PROMPTS = {"a tiger": (["a</w>", "tiger</w>"], {1: 7}), "a zebra at night": (["a</w>", "zebra</w>", "at</w>",
                                                                                 "night</w>"], {1: 21, 3: 7}),
           "snow": (["snow</w>"], {0: 21})}


def chunk(n_words: int) -> list[int]:
    """One chunk of T token ids: start, the words (ids 1..n), end, padding."""
    return [START, *range(1, n_words + 1), END] + [PAD] * (T - n_words - 2)


def test_rows_are_the_prompt_tokens_and_special_tokens_only_when_asked():
    ids = [chunk(2), chunk(1)]
    words = [["<s>", "a</w>", "cat</w>", "</s>", "<pad>", "<pad>", "<pad>", "<pad>"], ["<s>", "\u2581sofa", "</s>"]
             + ["<pad>"] * 5]
    plain = prompt_tokens(ids, words, START, END, special_tokens=False)
    assert plain.chunks == 2 and plain.kept == ((0, 1), (0, 2), (1, 1))
    assert "".join(plain.texts) == "a cat  sofa"
    special = prompt_tokens(ids, words, START, END, special_tokens=True)
    assert special.kept == ((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2))
    t5 = prompt_tokens([[5, 6, 1, 0]], [["\u2581a", "\u2581dog", "</s>", "<pad>"]], None, 1, special_tokens=False)
    assert t5.kept == ((0, 0), (0, 1)) and t5.texts == (" a", " dog")  # no start token: the first token is real
    assert token_text(None) == "<embedding>"


def test_batches_group_consecutive_prompts_of_one_signature_up_to_the_size():
    lengths = [77, 77, 77, 12, 12, 77, 77]
    assert batches(range(7), lambda i: lengths[i], 2) == [[0, 1], [2], [3, 4], [5, 6]]


def make_text_dataset(root, sae, prompts=PROMPTS, per_shard=2):
    """The recording patch on plain (N, T, C) layer outputs: noise, plus a planted feature's decoder direction on
    its token, one batch of all prompts per shard."""
    block = {"diffusers": "text_encoder.text_model.encoder.layers.3", "comfy": "clip_l.x.3",
             "hookpoint": "text_encoder.text_model.encoder.layers.3", "channels": D}
    header = {"name": "toy", "input_kind": "output", "dtype": "fp32", "settings": {"source": "text_encoder"},
              "blocks": {"clip_l.3": block}}
    writer = ActivationDatasetWriter(root, header)
    names = list(prompts)
    plans = writer.plan(names, [0] * len(names), per_shard)
    recorder = TextCollectPatch("fp32")
    g = torch.Generator().manual_seed(3)

    def run_shard(plan) -> None:
        indices = list(range(*plan.prompts))
        recorder.expect([(i, prompt_tokens([chunk(len(prompts[names[i]][0]))],
                                           [["<s>", *prompts[names[i]][0], "</s>"] + ["<pad>"] * T], START, END,
                                           False)) for i in indices])
        x = 0.01 * torch.randn(len(indices), T, D, generator=g)
        for row, i in enumerate(indices):
            for position, feature in prompts[names[i]][1].items():
                x[row, 1 + position] += 6.0 * sae.W_dec[feature].detach()
        assert patched_layer_output(recorder, x, CallContext(), returns_tuple=False) is x  # recording changes nothing

    collect_shards(writer, plans, {"clip_l.3": recorder}, run_shard)
    return writer


def test_the_recording_stores_one_row_per_real_token_with_its_text(tmp_path):
    sae = factories.tiny_sae(D, N, K, hookpoint="text_encoder.text_model.encoder.layers.3", input_kind="output")
    make_text_dataset(tmp_path / "data", sae)
    manifest = read_manifest(tmp_path / "data")
    assert [s["rows"]["clip_l.3"] for s in manifest["shards"]] == [2 + 4, 1]
    with safe_open(str(tmp_path / "data" / manifest["shards"][0]["files"]["clip_l.3"]), framework="pt") as f:
        tokens = json.loads(f.metadata()["tokens"])
        assert f.get_tensor("prompt").tolist() == [0, 0, 1, 1, 1, 1]
        assert f.get_tensor("position").tolist() == [0, 1, 0, 1, 2, 3]
    assert tokens == {"0": ["a ", "tiger "], "1": ["a ", "zebra ", "at ", "night "]}


def test_text_atlas_ranks_prompts_by_the_peak_token_and_keeps_the_tokens(tmp_path):
    sae = factories.tiny_sae(D, N, K, hookpoint="text_encoder.text_model.encoder.layers.3", input_kind="output")
    make_text_dataset(tmp_path / "data", sae)
    atlas = build_atlas_from_dataset(tmp_path / "data", sae, tmp_path / "t.atlas", top_n=2)  # dispatches on the source
    assert atlas.meta["text"] is True and atlas.next_id == 3
    tiger = atlas.feature(7)["examples"]
    assert sorted(e["prompt"] for e in tiger) == ["a tiger", "a zebra at night"]
    for example in tiger:  # the map is per token and peaks on the planted one
        planted = next(p for p, f in PROMPTS[example["prompt"]][1].items() if f == 7)
        assert len(example["map"][0]) == len(example["tokens"]) and max(example["map"][0]) == example["map"][0][planted]
        assert example["score"] == pytest.approx(example["map"][0][planted], rel=1e-2)
    zebra = atlas.feature(21)["examples"]
    assert sorted(e["prompt"] for e in zebra) == ["a zebra at night", "snow"]
    assert atlas.top_token(21) in ("zebra ", "snow ")
    reloaded = FeatureAtlas.load(tmp_path / "t.atlas")
    assert reloaded.feature(7)["examples"][0]["tokens"] == tiger[0]["tokens"]
    assert reloaded.top_token(7) == atlas.top_token(7)
    assert build_atlas_from_dataset(tmp_path / "data", sae, tmp_path / "t.atlas", top_n=2).next_id == 3


def test_text_atlas_refuses_image_datasets_and_shards_without_token_texts(tmp_path):
    sae = factories.tiny_sae(D, N, K, input_kind="output")
    image = make_text_dataset(tmp_path / "img", sae).root / "manifest.json"
    manifest = json.loads(image.read_text())
    manifest["settings"] = {"steps": 1}  # as an image collection's manifest
    image.write_text(json.dumps(manifest))
    with pytest.raises(SAEInputError, match="not collected from a text encoder"):
        build_text_atlas_from_dataset(tmp_path / "img", sae, tmp_path / "a.atlas")
    writer = make_text_dataset(tmp_path / "data", sae)
    shard = writer.root / read_manifest(writer.root)["shards"][0]["files"]["clip_l.3"]
    save_file(load_file(str(shard)), str(shard), metadata={"block": "clip_l.3"})  # token texts lost
    with pytest.raises(SAEInputError, match="lacks the token texts of prompt 0"):
        build_text_atlas_from_dataset(tmp_path / "data", sae, tmp_path / "b.atlas")
