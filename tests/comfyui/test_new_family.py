"""A model family added from this module alone, as another pack or the next architecture would add one: a ComfyUI
diffusion model SAE Lab has never seen (Flux's blocks under a new class), whose blocks diffusers names
``double_stream_blocks`` / ``single_stream_blocks`` (as HiDream does), with its own short codes and a token layout of
its own. Registering its :class:`DiTFamily` is all it takes: names resolve in every notation, and steering,
recording and collection run through ComfyUI's sampler, with nothing edited outside this file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
import tiny_dit
from tiny_dit import DiTProbe, dit_conditioning, sample
from tiny_models import CPU, LOAD_DEVICE, TinyTextEncoder, _init_weights

import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.collect import SAECollectActivations  # noqa: E402
from sae_lab_pack.nodes.observe import SAERecordActivations  # noqa: E402
from sae_lab_pack.nodes.patching import model_block_layout, model_family  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402
from sae_lab_pack.sae_core.blocks import families  # noqa: E402
from sae_lab_pack.sae_core.blocks.dit import DOUBLE, SINGLE, BlockList, TokenLayout  # noqa: E402
from sae_lab_pack.sae_core.blocks.family import DiTFamily  # noqa: E402
from sae_lab_pack.sae_core.blocks.names import diffusers_name, hookpoint_of, short_code  # noqa: E402


class StreamDiT(comfy.ldm.flux.model.Flux):
    """The new architecture: to SAE Lab a class it has no family for."""


class TinyStreamDiT(comfy.supported_models.FluxSchnell):
    def get_model(self, state_dict, prefix="", device=None):
        return comfy.model_base.Flux(self, device=device, unet_model=StreamDiT)


class ImageLast(TokenLayout):
    """This family's single blocks: the generated image is the last tokens of the sequence (it has no references)."""

    def image_start(self, sequence, n_image, args, ctx, patch):
        return sequence.shape[1] - n_image


STREAM_DIT = DiTFamily(
    name="stream_dit",
    title="StreamDiT",
    classes=("StreamDiT",),
    blocks=(BlockList(DOUBLE, "double_blocks", "double_stream_blocks", ("dual",)),
            BlockList(SINGLE, "single_blocks", "single_stream_blocks", ("mono",), ImageLast())),
    width=lambda model: model.img_in.out_features,
)
LATENT = torch.zeros(1, 16, 12, 18)
GRID = (6, 9)
N_IMAGE = GRID[0] * GRID[1]
TEXT = TinyTextEncoder(context_dim=32, pooled_dim=16)


@pytest.fixture(scope="module")
def model():
    families.register(STREAM_DIT)
    diffusion = TinyStreamDiT(tiny_dit.FAMILIES["flux"][1]()).get_model({}, device=CPU)
    _init_weights(diffusion.diffusion_model, 0)
    yield comfy.model_patcher.ModelPatcher(diffusion, load_device=LOAD_DEVICE, offload_device=CPU)
    families.unregister(STREAM_DIT)


def make_sae(block: str, k: int = 4) -> SparseAutoencoder:
    sae = comfy_harness.tiny_sae(64, 96, k, hookpoint=hookpoint_of(block), name="stream_sae", mean=2.0)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)  # every position has features that fire
    return sae


def probe(model, short: str, steps: int = 1):
    """(input, output) of every call of one block while sampling ``model`` (the probe is the outermost patch)."""
    block = model_block_layout(model).resolve(short)
    spy = DiTProbe(model, block.kind, block.index)
    pos, neg = dit_conditioning("flux")
    sample(spy.model, pos, neg, LATENT, steps=steps)
    return spy.calls


def test_the_family_names_its_blocks_in_every_notation(model):
    layout = model_block_layout(model)
    assert model_family(model) == "stream_dit"  # its own family wins over Flux, its ancestor's
    assert [b.short for b in layout] == ["dual.0", "dual.1", "mono.0", "mono.1", "mono.2"]
    assert [b.hookpoint for b in layout][-1] == "transformer.single_stream_blocks.2"
    for text in ("mono.1", "single_stream_blocks.1", "transformer.single_stream_blocks.1", "single_blocks.1"):
        assert layout.resolve(text).comfy == "single_blocks.1"
    assert diffusers_name("dual.1") == "double_stream_blocks.1" and short_code("single_stream_blocks.2") == "mono.2"
    with pytest.raises(ValueError, match="valid blocks: dual.0 / double_stream_blocks.0 / double_blocks.0"):
        layout.resolve("single.1")  # Flux's code: not this family's


def test_steering_edits_only_the_image_tokens_and_idle_is_bit_identical(model):
    sae = make_sae("mono.1")
    pos, neg = dit_conditioning("flux")
    base = sample(model, pos, neg, LATENT)
    idle = SAEFeatureSteer.execute(model, sae, "3", "add", 0.0).result[0]
    assert torch.equal(sample(idle, pos, neg, LATENT), base)
    steered = SAEFeatureSteer.execute(model, sae, "3", "add", 20.0).result[0]  # the block from the SAE's hookpoint
    assert not torch.equal(sample(steered, pos, neg, LATENT), base)
    (_, plain, _), = probe(model, "mono.1")
    (_, edited, _), = probe(steered, "mono.1")
    text = plain["img"].shape[1] - N_IMAGE
    assert torch.equal(edited["img"][:, :text], plain["img"][:, :text])  # text tokens untouched
    change = edited["img"][:, text:] - plain["img"][:, text:]
    direction = sae.W_dec[3] * 20.0 * 2.0  # strength x the feature's mean activation
    assert torch.allclose(change, direction.expand_as(change), atol=1e-4)
    assert torch.equal(sample(model, pos, neg, LATENT), base)  # the base model is untouched


def test_recording_encodes_the_update_at_the_image_tokens(model):
    sae = make_sae("single_stream_blocks.1")
    recorded, recording = SAERecordActivations.execute(model, sae, "").result
    pos, neg = dit_conditioning("flux")
    sample(recorded, pos, neg, LATENT, steps=1)
    (x, out, _), = probe(model, "mono.1")
    update = out["img"][:, -N_IMAGE:] - x[:, -N_IMAGE:]
    code = sae.encode_topk(update.reshape(1, *GRID, -1))
    call, = recording.calls
    assert call.grid == GRID
    assert torch.allclose(call.values.float().reshape(1, *GRID, -1).sort(-1).values,
                          code.values.sort(-1).values.half().float(), atol=1e-2)


def test_collection_stores_the_update_of_the_new_blocks(model, tmp_path, monkeypatch, sae_models_dir):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae_datasets",
                        ([str(tmp_path / "output" / "sae_datasets")], set()))
    comfy.model_management.interrupt_current_processing(False)
    with torch.inference_mode():
        name, _ = SAECollectActivations.execute(
            model, TEXT, prompts="a fox\na red car", blocks="mono.1, dual.0", store="diff", dataset_name="stream",
            steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", base_seed=3, width=144, height=96,
            passes="positive", dtype="fp32", prompts_per_shard=2, positions_per_image=0).result
    root = tmp_path / "output" / "sae_datasets" / name
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "stream_dit"
    assert manifest["blocks"]["mono.1"]["hookpoint"] == "transformer.single_stream_blocks.1"
    shard = load_file(str(root / manifest["shards"][0]["files"]["mono.1"]))
    assert shard["activations"].shape == (2 * N_IMAGE, 64)
    spy = DiTProbe(model, SINGLE, 1)
    cond = TEXT.encode_from_tokens_scheduled(TEXT.tokenize("a fox"))
    empty = TEXT.encode_from_tokens_scheduled(TEXT.tokenize(""))
    sample(spy.model, cond, empty, torch.zeros(1, 16, 12, 18), steps=1, seed=3)
    (x, out, _), = spy.calls
    update = (out["img"][:, -N_IMAGE:] - x[:, -N_IMAGE:])[0]
    assert torch.allclose(shard["activations"][:N_IMAGE], update, atol=1e-6)
