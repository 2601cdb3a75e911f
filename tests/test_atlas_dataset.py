"""Building an atlas headless from a collected activation dataset (python -m sae_core atlas)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import factories
import pytest
import torch

from sae_core import SAEInputError, SparseAutoencoder, save_sae
from sae_core.atlas.feature_atlas import FeatureAtlas
from sae_core.atlas.from_dataset import build_atlas_from_dataset
from sae_core.blocks.context import CallContext
from sae_core.blocks.unet import patched_output
from sae_core.train.collect import CollectPatch, collect
from sae_core.train.dataset import ActivationDatasetWriter

REPO = Path(__file__).resolve().parents[1]
D, N, K, H, W = 16, 64, 4, 3, 4
PLANTED = {0: 7, 1: 21, 2: 7}  # prompt -> the feature painted into its left half


def tiny_sae() -> SparseAutoencoder:
    return factories.tiny_sae(D, N, K)


def make_dataset(root: Path, sae: SparseAutoencoder, prompts=("a tiger", "a zebra", "a cat"), steps=2) -> None:
    """Run fake 'sampling' through the real recorder: the block update is a planted direction on the left."""
    header = {"name": "toy", "input_kind": "diff", "dtype": "fp32",
              "blocks": {"mid.0": {"diffusers": "mid_block.attentions.0", "comfy": "middle_block.1",
                                   "hookpoint": "unet.mid_block.attentions.0", "channels": D}}}
    writer = ActivationDatasetWriter(root, header)
    plans = writer.plan(list(prompts), list(range(100, 100 + len(prompts))), prompts_per_shard=2)
    recorder = CollectPatch("diff", dtype="fp32")
    g = torch.Generator().manual_seed(1)

    def run_prompt(index: int) -> None:
        for step in range(steps):
            x = torch.randn(1, D, H, W, generator=g)
            update = 0.01 * torch.randn(1, D, H, W, generator=g)
            update[..., :2] += 8.0 * sae.W_dec[PLANTED[index]].detach()[None, :, None, None]
            patched_output(recorder, x, x + update, CallContext((0,), 10.0 - step, (10.0, 9.0, 0.0)))

    collect(writer, plans, {"mid.0": recorder}, run_prompt)


def test_atlas_from_dataset_finds_the_planted_features(tmp_path):
    sae = tiny_sae()
    make_dataset(tmp_path / "data", sae)
    atlas = build_atlas_from_dataset(tmp_path / "data", sae, tmp_path / "tiny.atlas", top_n=2)
    assert atlas.next_id == 3
    tiger = atlas.feature(7)  # other features fire weakly on the noise; the planted ones dominate
    assert sorted(e["prompt"] for e in tiger["examples"]) == ["a cat", "a tiger"]
    assert sorted(e["seed"] for e in tiger["examples"]) == [100, 102]
    heat = torch.tensor(tiger["examples"][0]["map"])
    assert heat.shape == (H, W) and heat[:, :2].min() > 1.0 and heat[:, 2:].max() < 0.5 * heat[:, :2].min()
    zebra = atlas.feature(21)["examples"]
    assert zebra[0]["prompt"] == "a zebra" and all(e["score"] < 0.1 * zebra[0]["score"] for e in zebra[1:])
    # re-running adds nothing new; more prompts add only the new shard
    assert build_atlas_from_dataset(tmp_path / "data", sae, tmp_path / "tiny.atlas", top_n=2).next_id == 3


def test_atlas_command_line(tmp_path):
    sae = tiny_sae()
    save_sae(sae, tmp_path / "tiny.safetensors")
    make_dataset(tmp_path / "data", sae)
    result = subprocess.run([sys.executable, "-m", "sae_core", "atlas", "--data", str(tmp_path / "data"),
                             "--sae", str(tmp_path / "tiny.safetensors"), "--top-n", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3 generations seen" in result.stdout and "shard 2/2" in result.stderr
    atlas = FeatureAtlas.load(tmp_path / "tiny.atlas")
    assert sorted(e["prompt"] for e in atlas.feature(7)["examples"][:2]) == ["a cat", "a tiger"]


def test_dataset_of_the_wrong_kind_or_width_is_refused(tmp_path):
    sae = tiny_sae()
    make_dataset(tmp_path / "data", sae)
    output_sae = tiny_sae()
    output_sae.input_kind = "output"
    with pytest.raises(SAEInputError, match="stores block updates .* but this SAE encodes block outputs"):
        build_atlas_from_dataset(tmp_path / "data", output_sae, tmp_path / "a.atlas")
    wide = SparseAutoencoder(D * 2, N, K, input_kind="diff")
    with pytest.raises(SAEInputError, match="width 16 but the SAE has 32"):
        build_atlas_from_dataset(tmp_path / "data", wide, tmp_path / "b.atlas")
    with pytest.raises(SAEInputError, match="step 5 is not in the dataset"):
        build_atlas_from_dataset(tmp_path / "data", sae, tmp_path / "c.atlas", step=5)
