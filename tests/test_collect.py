"""Activation collection without ComfyUI: the recording patch, the dataset writer, resume and cancel."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sae_core.blocks.context import CallContext
from sae_core.blocks.unet import patched_output
from sae_core.errors import SAEInputError
from sae_core.prompts import parse_prompts, read_prompt_file
from sae_core.train.collect import CollectPatch, collect
from sae_core.train.dataset import ActivationDatasetWriter, read_manifest
from sae_core.train.dataset import weights_digest as fingerprint

HEADER = {"name": "ds", "input_kind": "diff", "dtype": "fp16", "model": {"fingerprint": "abc", "family": "SDXL"},
          "settings": {"steps": 2}, "blocks": {"down.2.1": {"channels": 8}, "up.0.1": {"channels": 8}}}


def test_recorder_stores_what_the_sae_would_encode_and_changes_nothing():
    g = torch.Generator().manual_seed(0)  # (never the global RNG: other test modules draw from it)
    x = torch.randn(4, 8, 3, 5, generator=g)  # (batch, channels, h, w): 2 passes x 2 images
    y = torch.randn(4, 8, 3, 5, generator=g)
    ctx = CallContext(chunk_kinds=(1, 0), sigma=5.0, sample_sigmas=(10.0, 5.0, 0.0))
    rec = CollectPatch("diff", passes="positive", dtype="fp32")
    rec.prompt_index = 7
    assert patched_output(rec, x, y, ctx) is y
    data = rec.take()
    positive = (y - x)[2:].permute(0, 2, 3, 1).reshape(-1, 8)  # chunk 2 of [negative, positive]
    assert torch.equal(data.tensors()["activations"], positive)
    t = data.tensors()
    assert t["prompt"].unique().tolist() == [7] and t["step"].unique().tolist() == [1]
    assert t["position"].tolist() == list(range(15)) * 2 and t["pass"].unique().tolist() == [0]
    assert data.grid == (3, 5)

    both = CollectPatch("output", passes="both", dtype="fp16")
    patched_output(both, x, y, ctx)
    t = both.take().tensors()
    assert t["activations"].dtype == torch.float16 and t["activations"].shape == (60, 8)
    assert torch.equal(t["activations"], y.permute(0, 2, 3, 1).reshape(-1, 8).half())
    assert t["pass"].tolist() == [1] * 30 + [0] * 30

    negative_only = CollectPatch("diff")  # a call with only the negative pass records nothing
    patched_output(negative_only, x[:2], y[:2], CallContext(chunk_kinds=(1,)))
    assert negative_only.take().n_rows == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"input_kind": "update"}, "store 'update' is not valid; valid: diff"),
    ({"input_kind": "diff", "passes": "negative"}, "passes 'negative' is not valid; valid: positive, both"),
    ({"input_kind": "diff", "dtype": "int8"}, "dtype 'int8' is not valid; valid: fp16, bf16, fp32"),
])
def test_recorder_rejects_bad_settings(kwargs, message):
    with pytest.raises(SAEInputError, match=message):
        CollectPatch(**kwargs)


class FakeSampler:
    """Stands in for sampling: each prompt produces 2 steps of a (1, 8, 2, 3) block call per block."""

    def __init__(self, recorders):
        self.recorders, self.calls = recorders, []

    def __call__(self, index: int) -> None:
        self.calls.append(index)
        for j, rec in enumerate(self.recorders.values()):
            for step, sigma in enumerate((2.0, 1.0)):
                x = torch.zeros(1, 8, 2, 3)
                patched_output(rec, x, x + index + 100 * j + 0.5 * step, CallContext((0,), sigma, (2.0, 1.0, 0.0)))


def start(root, prompts, per_shard=2):
    writer = ActivationDatasetWriter(root, HEADER)
    plans = writer.plan(prompts, list(range(len(prompts))), per_shard)
    recorders = {b: CollectPatch("diff", dtype="fp16") for b in HEADER["blocks"]}
    return writer, plans, recorders, FakeSampler(recorders)


def test_collect_writes_shards_and_manifest(tmp_path):
    writer, plans, recorders, sampler = start(tmp_path, ["a", "b", "c", "d", "e"])
    progress = []
    result = collect(writer, plans, recorders, sampler, on_prompt_done=progress.append)
    assert result.written == [0, 1, 2] and sum(progress) == 5 and sampler.calls == [0, 1, 2, 3, 4]
    manifest = read_manifest(tmp_path)
    assert manifest["prompts"] == ["a", "b", "c", "d", "e"] and manifest["seeds"] == [0, 1, 2, 3, 4]
    assert manifest["settings"] == {"steps": 2} and manifest["model"]["fingerprint"] == "abc"
    assert [s["prompts"] for s in manifest["shards"]] == [[0, 2], [2, 4], [4, 5]]
    assert manifest["shards"][2]["rows"] == {"down.2.1": 12, "up.0.1": 12}   # 1 prompt x 2 steps x 6 positions
    t = load_file(str(tmp_path / manifest["shards"][1]["files"]["up.0.1"]))
    assert t["activations"].shape == (24, 8) and t["activations"].dtype == torch.float16
    assert t["prompt"].tolist() == [2] * 12 + [3] * 12
    assert t["step"].tolist() == ([0] * 6 + [1] * 6) * 2
    assert t["activations"][:, 0].tolist() == [102.0] * 6 + [102.5] * 6 + [103.0] * 6 + [103.5] * 6
    assert result.rows == {"down.2.1": 60, "up.0.1": 60}
    assert not list(tmp_path.rglob("*.tmp"))


def test_resume_skips_finished_shards_and_cancel_keeps_them(tmp_path):
    writer, plans, recorders, sampler = start(tmp_path, ["a", "b", "c", "d", "e"])

    class Cancelled(Exception):
        pass

    def cancel_during_third_prompt():
        if len(sampler.calls) == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        collect(writer, plans, recorders, sampler, check_cancel=cancel_during_third_prompt)
    manifest = read_manifest(tmp_path)
    assert [s["index"] for s in manifest["shards"]] == [0]       # shard 1 was in progress: dropped
    first = (tmp_path / manifest["shards"][0]["files"]["down.2.1"]).read_bytes()

    writer, plans, recorders, sampler = start(tmp_path, ["a", "b", "c", "d", "e"])  # a new run continues
    result = collect(writer, plans, recorders, sampler)
    assert result.skipped == [0] and result.written == [1, 2] and sampler.calls == [2, 3, 4]
    assert (tmp_path / manifest["shards"][0]["files"]["down.2.1"]).read_bytes() == first

    writer, plans, recorders, sampler = start(tmp_path, ["a", "b", "c", "d", "e", "f"])  # more prompts later
    result = collect(writer, plans, recorders, sampler)
    assert result.skipped == [0, 1] and result.written == [2] and sampler.calls == [4, 5]

    (tmp_path / "down.2.1" / "shard_00001.safetensors").unlink()  # a lost file is redone
    writer, plans, recorders, sampler = start(tmp_path, ["a", "b", "c", "d", "e", "f"])
    assert collect(writer, plans, recorders, sampler).written == [1]


def test_continuing_with_other_settings_or_prompts_is_refused(tmp_path):
    writer, plans, recorders, sampler = start(tmp_path, ["a", "b", "c"])
    collect(writer, plans, recorders, sampler)
    with pytest.raises(SAEInputError, match=r"different 'settings' \(saved: \{\"steps\": 2\}, now: \{\"steps\": 4\}\)"):
        ActivationDatasetWriter(tmp_path, {**HEADER, "settings": {"steps": 4}})
    with pytest.raises(SAEInputError, match="already holds shard 0 made from other prompts"):
        ActivationDatasetWriter(tmp_path, HEADER).plan(["x", "b", "c"], [0, 1, 2], 2)
    with pytest.raises(SAEInputError, match="no prompts given"):
        ActivationDatasetWriter(tmp_path, HEADER).plan([], [], 2)


def test_prompt_lists(tmp_path):
    assert parse_prompts("a cat\n\n  a dog  \n") == ["a cat", "a dog"]
    (tmp_path / "p.txt").write_text("one\ntwo, with comma\n\nthree\n")
    assert read_prompt_file(tmp_path / "p.txt") == ["one", "two, with comma", "three"]
    (tmp_path / "p.csv").write_text('id,caption\n1,"a red car, parked"\n2,a tree\n')
    assert read_prompt_file(tmp_path / "p.csv") == ["a red car, parked", "a tree"]
    (tmp_path / "q.csv").write_text("a house\nthe sea\n")
    assert read_prompt_file(tmp_path / "q.csv") == ["a house", "the sea"]
    with pytest.raises(SAEInputError, match="prompt file .* does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_fingerprint_tells_weights_apart():
    w = {"a": torch.arange(10000.0), "b": torch.ones(3, 3)}
    same = fingerprint(w.items())
    assert fingerprint({k: v.clone() for k, v in w.items()}.items()) == same
    changed = {**w, "a": w["a"].clone().index_fill_(0, torch.tensor([0]), -1.0)}
    assert fingerprint(changed.items()) != same
    assert fingerprint(w.items(), extra=["lora"]) != same
    assert json.dumps(same)
