"""The diffusion-transformer adapter without ComfyUI: token grids, where the image's tokens are, views, families."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sae_core import SAEInputError
from sae_core.blocks.context import CallContext
from sae_core.blocks.dit import DOUBLE, IMAGE_AFTER_TEXT, IMAGE_FIRST, SINGLE, patched_block, token_grid
from sae_core.blocks.families import family_of
from sae_core.blocks.names import diffusers_name, hookpoint_of, short_code
from sae_core.blocks.patch import BlockPatch
from sae_core.train.collect import CollectPatch


def test_token_grid_pads_odd_latents_like_the_models():
    assert token_grid((1, 16, 128, 128), 2) == (64, 64)          # 1024 px Flux
    assert token_grid((2, 16, 13, 19), 2) == (7, 10)             # odd sizes are padded
    assert token_grid((1, 16, 1, 12, 18), 2) == (6, 9)           # Qwen-Image's one-frame latents
    with pytest.raises(SAEInputError, match="a latent of 5 frames is a video"):
        token_grid((1, 16, 5, 12, 18), 2)
    with pytest.raises(SAEInputError, match="did not say the latent's size"):
        token_grid(None, 2)


def sequences(n_rows=2, txt=5, grid=(2, 3), refs=4, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    return torch.randn(n_rows, txt + n + refs, width, generator=g), torch.randn(n_rows, txt + n + refs, width,
                                                                                generator=g)


class Spy(BlockPatch):
    """Keeps the view it is called with and returns a fixed change (None: unchanged)."""

    def __init__(self, delta=None, input_kind="diff"):
        self.delta, self.input_kind, self.view = delta, input_kind, None

    def __call__(self, view, ctx):
        self.view = view
        return self.delta


def run_patched(patch, tokens, x, y, ctx, options=None):
    args = {"img": x, "transformer_options": options or {}}
    return patched_block(patch, tokens, args, lambda a: {"img": y, "txt": None}, ctx, patch_size=2)


def test_single_block_view_reads_and_writes_only_the_generated_image():
    x, y = sequences()
    ctx = CallContext(latent_shape=(2, 16, 4, 6), ref_shapes=((1, 16, 4, 4),))  # 2 x 3 image, 2 x 2 reference
    assert ctx.ref_tokens(2) == 4
    delta = torch.randn(2, 2, 3, 8)
    spy = Spy(delta)
    out = run_patched(spy, IMAGE_AFTER_TEXT, x, y, ctx)
    view = spy.view
    assert (view.start, view.grid, view.n_rows) == (5, (2, 3), 2)  # 15 tokens - 6 image - 4 reference
    assert torch.equal(view.sae_input("diff"), (y - x)[:, 5:11].reshape(2, 2, 3, 8))
    assert torch.equal(view.sae_input("output"), y[:, 5:11].reshape(2, 2, 3, 8))
    assert set(out) == {"img", "txt"} and out["txt"] is None  # the block's whole output dict, one stream edited
    edited = out["img"]
    assert torch.equal(edited[:, :5], y[:, :5]) and torch.equal(edited[:, 11:], y[:, 11:])
    assert torch.equal(edited[:, 5:11], y[:, 5:11] + delta.reshape(2, 6, 8))
    assert torch.equal(view.with_delta(delta)["img"], edited)
    # ComfyUI 0.33 says where the text ends; that wins over the count
    sliced = Spy()
    run_patched(sliced, IMAGE_AFTER_TEXT, x, y, CallContext(latent_shape=(2, 16, 4, 6)), {"img_slice": [5, 15]})
    assert sliced.view.start == 5


def test_double_block_view_starts_at_the_image_and_a_patch_with_nothing_to_do_returns_the_output_itself():
    x, y = sequences(txt=0)
    block_out = {"img": y}
    spy = Spy()
    out = patched_block(spy, IMAGE_FIRST, {"img": x}, lambda a: block_out, CallContext(latent_shape=(2, 16, 3, 5)), 2)
    assert out is block_out and spy.view.start == 0 and spy.view.grid == (2, 3)
    with pytest.raises(SAEInputError, match="does not hold the 4x4 image tokens"):
        run_patched(Spy(), IMAGE_FIRST, x, y, CallContext(latent_shape=(2, 16, 8, 8)))


def test_the_input_tokens_are_copied_before_the_block_runs_and_only_for_a_patch_that_reads_them():
    """ComfyUI's Flux blocks add their update to their input in place."""
    x, y = sequences(txt=0)
    ctx = CallContext(latent_shape=(2, 16, 3, 5))
    original = x.clone()

    def in_place(args):
        args["img"] += 1.0
        return {"img": args["img"]}

    reader = Spy()
    patched_block(reader, IMAGE_FIRST, {"img": x}, in_place, ctx, 2)
    assert torch.allclose(reader.view.sae_input("diff"), torch.ones(2, 2, 3, 8))
    assert torch.equal(reader.view.x_image, original[:, :6])
    output_reader = Spy(input_kind="output")
    patched_block(output_reader, IMAGE_FIRST, {"img": x.clone()}, in_place, ctx, 2)
    assert output_reader.view.x_image is None


def test_dit_names_in_every_notation():
    assert diffusers_name("double_blocks.3") == diffusers_name("double.3") == "transformer_blocks.3"
    assert diffusers_name("joint_blocks.2") == diffusers_name("transformer.transformer_blocks.2") == \
        "transformer_blocks.2"
    assert diffusers_name("single_blocks.5") == diffusers_name("single.5") == "single_transformer_blocks.5"
    assert short_code("single_transformer_blocks.5") == "single.5" and short_code("transformer_blocks.3") == "block.3"
    assert hookpoint_of("transformer_blocks.3") == "transformer.transformer_blocks.3"
    assert hookpoint_of("down_blocks.2.attentions.1") == "unet.down_blocks.2.attentions.1"


class Flux(nn.Module):  # stands in for comfy.ldm.flux.model.Flux: matched by class name, no ComfyUI needed
    def __init__(self):
        super().__init__()
        self.img_in = nn.Linear(64, 32)
        self.double_blocks = nn.ModuleList([nn.Identity()] * 2)
        self.single_blocks = nn.ModuleList([nn.Identity()] * 3)
        self.patch_size = 2


def test_a_family_is_recognised_by_class_and_lays_out_its_blocks():
    family = family_of(Flux())
    assert family is not None and family.name == "flux" and family.patch_size(Flux()) == 2
    layout = family.layout(Flux(), "TinyFlux")
    assert [(b.short, b.comfy, b.kind, b.index, b.channels) for b in layout][1:3] == [
        ("block.1", "double_blocks.1", DOUBLE, 1, 32), ("single.0", "single_blocks.0", SINGLE, 0, 32)]
    assert family_of(nn.Linear(2, 2)) is None


def test_collection_keeps_a_seeded_random_subset_of_positions_per_image_and_step():
    x = torch.zeros(4, 8, 3, 5)
    y = torch.randn(4, 8, 3, 5, generator=torch.Generator().manual_seed(0))
    ctx = CallContext((1, 0), 5.0, (10.0, 5.0, 0.0))
    from sae_core.blocks.unet import patched_output

    def collect(seed):
        rec = CollectPatch("diff", passes="both", dtype="fp32", positions=4, seed=seed)
        rec.prompt_index = 2
        patched_output(rec, x, y, ctx)
        return rec.take().tensors()

    first, again, other = collect(7), collect(7), collect(8)
    assert first["activations"].shape == (16, 8) and torch.equal(first["position"], again["position"])
    assert not torch.equal(first["position"], other["position"])
    rows = y.permute(0, 2, 3, 1).reshape(4, 15, 8)
    for r in range(4):
        positions = first["position"][4 * r:4 * r + 4].long()
        assert positions.tolist() == sorted(set(positions.tolist()))
        assert torch.equal(first["activations"][4 * r:4 * r + 4], rows[r, positions])
    assert first["pass"].tolist() == [1] * 8 + [0] * 8


def test_the_block_input_is_kept_only_for_a_patch_that_will_read_it():
    """Flux blocks update their input in place, so an adapter copies the image tokens first: not for a patch that
    is idle or outside its window, nor for one that reads the output."""
    from sae_core import SparseAutoencoder
    from sae_core.blocks.context import ALWAYS, StepWindow
    from sae_core.blocks.patch import reads_block_input
    from sae_core.edits.steering import FeatureSteering, SteerPatch
    from sae_core.sae.feature_ids import FeatureEdit

    def steer(strength, input_kind="diff", window=ALWAYS, mode="scale", input_norm=False):
        sae = SparseAutoencoder(8, 16, 2, input_kind=input_kind, input_norm=input_norm)
        return SteerPatch(FeatureSteering(sae, [FeatureEdit(3, strength)], mode), window, "both", None)

    ctx = CallContext(sigma=5.0)
    assert reads_block_input(steer(2.0), ctx)
    assert not reads_block_input(steer(0.0), ctx)
    assert not reads_block_input(steer(2.0, window=StepWindow(sigma_start=1.0)), ctx)
    assert not reads_block_input(steer(2.0, input_kind="output"), ctx)
    assert not reads_block_input(steer(2.0, mode="add"), ctx)  # adding a direction reads nothing of the block
    assert reads_block_input(steer(2.0, mode="add", input_norm=True), ctx)  # unless the SAE standardises its input
    assert reads_block_input(CollectPatch("diff", "both", "fp16"), ctx)  # no skips(): always kept
