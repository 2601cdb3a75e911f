"""Flux.2 (ComfyUI 0.33+): the same Flux blocks with 128 latent channels, no patchifying (one token per latent
pixel), shared modulation and reference latents placed by index. A tiny Flux.2 built with ComfyUI's own classes,
through its sampler: names, idle exactness, masks on a non-square token grid, text and reference tokens untouched."""
from __future__ import annotations

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_dit import TinyFlux2, DiTProbe, build_dit, dit_conditioning, image_tokens, sample, with_reference

if TinyFlux2 is None:
    pytest.skip(f"ComfyUI {'.'.join(map(str, comfy_harness.COMFYUI_VERSION))} has no Flux.2 model",
                allow_module_level=True)

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.patching import model_block_layout  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402

LATENT = torch.zeros(1, 128, 6, 9)  # Flux.2 latents are 1/16 of the image: 96 x 144 px, a 6 x 9 token grid
GRID = (6, 9)


@pytest.fixture(scope="module")
def model():
    return build_dit("flux2")


def make_sae(block: str) -> SparseAutoencoder:
    return comfy_harness.tiny_sae(64, 96, 6, hookpoint=f"transformer.{block}", name="tiny_flux2", mean=2.0)


def steer(model, sae, strength=20.0, **kwargs):
    return SAEFeatureSteer.execute(model, sae, "3, 7", "add", strength, **kwargs).result[0]


def calls_of(model, block: str, positive, negative):
    target = model_block_layout(model).resolve(block)
    probe = DiTProbe(model, target.kind, target.index)
    out = sample(probe.model, positive, negative, LATENT, steps=1)  # one step: every call sees the same input
    return target, probe.calls, out


def test_flux2_blocks_are_named_as_flux_blocks(model):
    layout = model_block_layout(model)
    assert [b.comfy for b in layout] == ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1",
                                         "single_blocks.2"]
    assert layout.resolve("single_transformer_blocks.2") is layout.resolve("single.2")


@pytest.mark.parametrize("block", ["block.1", "single.2"])
def test_idle_is_bit_identical_and_a_masked_edit_stays_on_its_image_tokens(model, block):
    pos, neg = dit_conditioning("flux2")
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    sae = make_sae(model_block_layout(model).resolve(block).diffusers)
    base = sample(model, pos, neg, LATENT)
    assert torch.equal(sample(steer(model, sae, strength=0.0), pos, neg, LATENT), base)

    mask = torch.zeros(1, 96, 144)
    mask[:, :48, 80:] = 1.0  # token rows 0-2, columns 5-8 (16 px per token)
    target, base_calls, _ = calls_of(model, block, pos, neg)
    _, calls, out = calls_of(steer(model, sae, mask=mask, passes="both"), block, pos, neg)
    assert not torch.equal(out, base)
    inside = torch.zeros(GRID, dtype=torch.bool)
    inside[:3, 5:] = True
    inside = inside.flatten()
    n = GRID[0] * GRID[1]
    for (_, base_out, _), (_, edited, _) in zip(base_calls, calls):
        base_img, base_rest = image_tokens(base_out["img"], target.kind, n)
        img, rest = image_tokens(edited["img"], target.kind, n)
        assert torch.equal(img[:, ~inside], base_img[:, ~inside]) and not torch.equal(img[:, inside],
                                                                                       base_img[:, inside])
        assert torch.equal(rest, base_rest)
        if "txt" in edited:
            assert torch.equal(edited["txt"], base_out["txt"])
    assert torch.equal(sample(model, pos, neg, LATENT), base)
    for key, value in model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("block", ["block.0", "single.1"])
def test_reference_tokens_of_an_edit_model_are_never_edited(model, block):
    pos, neg = dit_conditioning("flux2")
    pos = with_reference(pos, torch.randn(1, 128, 4, 5, generator=torch.Generator().manual_seed(1)))
    sae = make_sae(model_block_layout(model).resolve(block).diffusers)
    target, base_calls, base = calls_of(model, block, pos, neg)
    _, calls, out = calls_of(steer(model, sae, passes="both"), block, pos, neg)
    n, refs = GRID[0] * GRID[1], 4 * 5
    assert base_calls[0][1]["img"].shape[1] >= n + refs
    for (_, base_out, _), (_, edited, _) in zip(base_calls, calls):
        base_img, base_rest = image_tokens(base_out["img"], target.kind, n, refs)
        img, rest = image_tokens(edited["img"], target.kind, n, refs)
        assert torch.equal(rest, base_rest) and not torch.equal(img, base_img)
    assert not torch.equal(out, base)
