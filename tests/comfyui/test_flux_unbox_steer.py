"""The sdxl-unbox authors' Flux demo steers a feature across a range of blocks: it adds the feature's direction into
the image stream at double block 18 and at every single block after it (surkovv/sdxl-unbox, branch
flux_integration: app.py's ``image_mod`` runs ``add_feature_on_area_flux`` through ``edit_streams_hook`` at
layers 18..56). SAE Feature Steer does the same with one node; here it is compared with that hook, written out by
hand as a ComfyUI block replacement, on a tiny Flux (2 double + 3 single blocks: double.1, single.0-2 stand for
double.18, single.0-37).

The demo shares one step counter (``TimedHook``) between its 39 hooks, so its step window counts block calls, not
steps; that is not copied: the edit acts at every block of each step inside start/end percent."""
from __future__ import annotations

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_dit import build_dit, dit_conditioning, sample

pack = comfy_harness.load_pack()
from sae_lab_pack.nodes.patching import model_block_layout  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402
from sae_lab_pack.sae_core import SparseAutoencoder  # noqa: E402
from sae_lab_pack.sae_core.blocks.dit import DOUBLE  # noqa: E402

LATENT = torch.zeros(1, 16, 12, 18)  # a 6 x 9 token grid
GRID = (6, 9)
N_IMAGE = GRID[0] * GRID[1]
DEMO_BLOCKS = "double.1, single.0-2"


@pytest.fixture(scope="module")
def flux():
    return build_dit("flux")


@pytest.fixture(scope="module")
def sae():
    sae = SparseAutoencoder(64, 192, 8, hookpoint="transformer.transformer_blocks.1", input_kind="diff",
                            model_family="flux", name="tiny_unbox_flux")
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.set_feature_stats(mean=torch.linspace(0.5, 3.0, 192))  # the demo's mean.pt: one mean per feature
    return sae


def demo_hook_reference(model, sae, feature: int, strength: float, mask_grid: torch.Tensor):
    """``add_feature_on_area_flux(sae, f, mask * mean[f] * strength, ...)`` at each demo block: the block's image
    tokens (double blocks: the image stream; single blocks: the tokens after the text) get
    ``mask[p] * mean[f] * strength * d_f``, where ``d_f`` is the feature's decoder column."""
    to_add = (mask_grid.flatten()[:, None] * float(sae.feature_mean[feature]) * strength) * sae.W_dec[feature]
    patched = model.clone()
    for block in model_block_layout(model).resolve_many(DEMO_BLOCKS):
        def replacement(args, extra, kind=block.kind):
            out = extra["original_block"](args)
            img = out["img"].clone()
            if kind == DOUBLE:
                img[:, :N_IMAGE] += to_add.to(img.dtype)
            else:
                img[:, -N_IMAGE:] += to_add.to(img.dtype)
            return {**out, "img": img}

        patched.set_model_patch_replace(replacement, "dit", block.kind, block.index)
    return patched


def test_a_feature_steered_across_the_demo_blocks_equals_the_demo_hook(flux, sae):
    mask = torch.zeros(1, 96, 144)
    mask[:, 16:80, 48:144] = 1.0
    mask[:, 80:, :40] = 0.5  # partial token cells average as the demo's downsample_mask does
    mask_grid = torch.nn.functional.avg_pool2d(mask[None], 16)[0, 0]
    pos, neg = dit_conditioning("flux")
    steered = SAEFeatureSteer.execute(flux, sae, "7", "add", 6.0, block=DEMO_BLOCKS, mask=mask).result[0]
    ours = sample(steered, pos, neg, LATENT, steps=2)
    theirs = sample(demo_hook_reference(flux, sae, 7, 6.0, mask_grid), pos, neg, LATENT, steps=2)
    base = sample(flux, pos, neg, LATENT, steps=2)
    assert not torch.allclose(ours, base, atol=1e-3)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    # one block alone is a different edit: the list really reaches every block
    one_block = SAEFeatureSteer.execute(flux, sae, "7", "add", 6.0, block="double.1", mask=mask).result[0]
    assert not torch.allclose(sample(one_block, pos, neg, LATENT, steps=2), ours, atol=1e-4)


def test_idle_across_many_blocks_is_bit_identical_and_the_base_model_is_untouched(flux, sae):
    pos, neg = dit_conditioning("flux")
    base = sample(flux, pos, neg, LATENT)
    idle = SAEFeatureSteer.execute(flux, sae, "7", "add", 0.0, block=DEMO_BLOCKS).result[0]
    assert torch.equal(sample(idle, pos, neg, LATENT), base)
    outside = SAEFeatureSteer.execute(flux, sae, "7", "add", 6.0, block=DEMO_BLOCKS, start_percent=1.0,
                                      end_percent=1.0).result[0]
    assert torch.equal(sample(outside, pos, neg, LATENT), base)
    active = SAEFeatureSteer.execute(flux, sae, "7", "scale", 2.0, block=DEMO_BLOCKS).result[0]
    assert not torch.equal(sample(active, pos, neg, LATENT), base)
    assert torch.equal(sample(flux, pos, neg, LATENT), base)


@pytest.mark.parametrize("blocks, message", [
    ("single.2-0", "first <= last"),
    ("single.0-99", "not a range of this"),
    ("single.0-3", "single.3' does not exist"),
    ("double.1, ", None),  # a trailing comma is fine
    (" , ", "no block given"),
])
def test_block_lists_are_checked_and_errors_name_the_node(flux, sae, blocks, message):
    run = SAEFeatureSteer.execute
    if message is None:
        assert run(flux, sae, "7", "add", 6.0, block=blocks).result[0] is not flux
        return
    with pytest.raises(ValueError, match="SAE Feature Steer: ") as info:
        run(flux, sae, "7", "add", 6.0, block=blocks)
    assert message in str(info.value)
