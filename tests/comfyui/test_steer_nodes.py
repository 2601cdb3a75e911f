"""SAE Feature Steer and Load SAE inside ComfyUI's real sampler, on tiny SDXL- and SD1.5-layout U-Nets."""
from __future__ import annotations

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)
from tiny_models import BlockProbe, build_unet, random_conditioning, sample

import comfy.utils

pack = comfy_harness.load_pack()
from sae_lab_pack.sae_core import SparseAutoencoder, save_sae  # noqa: E402  (the pack's own copy)
from sae_lab_pack.sae_core.blocks.families.unet import SD15, SDXL  # noqa: E402
from sae_lab_pack.nodes.patching import model_block_layout  # noqa: E402
from sae_lab_pack.nodes.sae import SAELoader  # noqa: E402
from sae_lab_pack.nodes.steer import SAEFeatureSteer  # noqa: E402

LATENT = torch.zeros(1, 4, 64, 64)


@pytest.fixture(scope="module")
def sdxl():
    return build_unet("sdxl")


@pytest.fixture(scope="module")
def sd15():
    return build_unet("sd15")


def make_sae(d_in: int, hookpoint: str, input_kind: str = "diff", n_latents: int = 256, k: int = 8,
             seed: int = 0) -> SparseAutoencoder:
    return comfy_harness.tiny_sae(d_in, n_latents, k, hookpoint=hookpoint, input_kind=input_kind, seed=seed,
                                  encoder_gain=3.0, mean="random")


def steer(model, sae, features="5", mode="add", strength=10.0, **kwargs):
    return SAEFeatureSteer.execute(model, sae, features, mode, strength, **kwargs).result[0]


def first_call(model, block: str, pos, neg, latent=LATENT, cfg=1.0):
    probe = BlockProbe(model, block)
    sample(probe.model, pos, neg, latent, steps=1, cfg=cfg)
    return probe.calls[0]


def active_feature(sae, x, y) -> int:
    u = (y - x if sae.input_kind == "diff" else y).permute(0, 2, 3, 1)
    return int(sae.encode(u).sum(dim=(0, 1, 2)).argmax())


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("family, table", [("sdxl", SDXL.static_layout), ("sd15", SD15.static_layout)])
def test_layout_derived_from_comfyui_matches_the_reference_table(family, table, request):
    layout = model_block_layout(request.getfixturevalue(family))
    assert [(b.diffusers, b.comfy) for b in layout] == [(b.diffusers, b.comfy) for b in table]
    # tiny models have a quarter... of the real width, in the same proportions
    scale = table.blocks[0].channels // layout.blocks[0].channels
    assert [b.channels * scale for b in layout] == [b.channels for b in table]


# ---------------------------------------------------------------- exactness
def test_idle_patch_is_bit_identical_and_base_model_untouched(sdxl):
    pos, neg = random_conditioning()
    base = sample(sdxl, pos, neg, LATENT)
    weights_before = {k: v.clone() for k, v in sdxl.model.diffusion_model.state_dict().items()}
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    assert torch.equal(sample(steer(sdxl, sae, strength=0.0), pos, neg, LATENT), base)
    assert torch.equal(sample(steer(sdxl, sae, mode="scale", strength=0.0), pos, neg, LATENT), base)
    assert torch.equal(sample(steer(sdxl, sae, mask=torch.zeros(1, 64, 64)), pos, neg, LATENT), base)
    steered = sample(steer(sdxl, sae, strength=20.0), pos, neg, LATENT)
    assert not torch.equal(steered, base)
    # after a patched run the shared model is exactly as before
    assert torch.equal(sample(sdxl, pos, neg, LATENT), base)
    for key, value in sdxl.model.diffusion_model.state_dict().items():
        assert torch.equal(value, weights_before[key]), key


def test_step_window_outside_the_schedule_is_identical(sdxl):
    pos, neg = random_conditioning()
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    base = sample(sdxl, pos, neg, LATENT, steps=4)
    late_only = steer(sdxl, sae, strength=20.0, start_percent=0.6, end_percent=1.0)
    early_only = steer(sdxl, sae, strength=20.0, start_percent=0.0, end_percent=0.3)
    assert not torch.equal(sample(late_only, pos, neg, LATENT, steps=4), base)
    assert not torch.equal(sample(early_only, pos, neg, LATENT, steps=4), sample(late_only, pos, neg, LATENT, steps=4))
    probe = BlockProbe(early_only, "input_blocks.8.1")
    base_probe = BlockProbe(sdxl, "input_blocks.8.1")
    sample(probe.model, pos, neg, LATENT, steps=4)
    sample(base_probe.model, pos, neg, LATENT, steps=4)
    assert not torch.equal(probe.calls[0][1], base_probe.calls[0][1])  # first step: edited


# ---------------------------------------------------------------- each mode acts only inside the mask
@pytest.mark.parametrize("mode", ["add", "scale", "ablate", "clamp", "replace"])
def test_each_mode_changes_the_block_only_inside_the_mask(sdxl, mode):
    pos, neg = random_conditioning()
    block = "input_blocks.8.1"
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    x, y_base, _ = first_call(sdxl, block, pos, neg)
    feature = active_feature(sae, x, y_base)
    mask = torch.zeros(1, 512, 512)
    mask[:, :256, 256:] = 1.0  # top-right quarter of a 512 px image
    _, y, _ = first_call(steer(sdxl, sae, str(feature), mode, 5.0, mask=mask), block, pos, neg)
    h, w = y.shape[-2:]
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[: h // 2, w // 2:] = True
    assert torch.equal(y[..., ~inside], y_base[..., ~inside])
    assert not torch.equal(y[..., inside], y_base[..., inside])


def test_two_chained_steers_both_act(sdxl):
    pos, neg = random_conditioning()
    block = "output_blocks.1.1"
    sae = make_sae(128, "unet.up_blocks.0.attentions.1")
    x, y_base, _ = first_call(sdxl, block, pos, neg)
    _, y_a, _ = first_call(steer(sdxl, sae, "3", strength=4.0), block, pos, neg)
    _, y_b, _ = first_call(steer(sdxl, sae, "9", strength=-2.0), block, pos, neg)
    _, y_ab, _ = first_call(steer(steer(sdxl, sae, "3", strength=4.0), sae, "9", strength=-2.0), block, pos, neg)
    assert torch.allclose(y_ab - y_base, (y_a - y_base) + (y_b - y_base), atol=1e-4)
    # and across blocks: a second SAE on another block still applies
    other = make_sae(128, "unet.down_blocks.2.attentions.1", seed=3)
    both = steer(steer(sdxl, sae, "3", strength=4.0), other, "7", strength=6.0)
    one = sample(steer(sdxl, sae, "3", strength=4.0), pos, neg, LATENT)
    assert not torch.equal(sample(both, pos, neg, LATENT), one)


def test_weight_patch_inside_the_block_still_applies(sdxl):
    pos, neg = random_conditioning()
    key = "diffusion_model.output_blocks.1.1.proj_out.weight"
    weight = sdxl.model.diffusion_model.state_dict()[key[len("diffusion_model."):]]
    lora_like = sdxl.clone()
    lora_like.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5,)}, 1.0)
    sae = make_sae(128, "unet.up_blocks.0.attentions.1")
    base, with_lora = sample(sdxl, pos, neg, LATENT), sample(lora_like, pos, neg, LATENT)
    assert not torch.equal(with_lora, base)
    assert torch.equal(sample(steer(lora_like, sae, strength=0.0), pos, neg, LATENT), with_lora)
    steered = sample(steer(lora_like, sae, strength=10.0), pos, neg, LATENT)
    assert not torch.equal(steered, with_lora) and not torch.equal(steered, sample(steer(sdxl, sae), pos, neg, LATENT))
    assert torch.equal(sample(sdxl, pos, neg, LATENT), base)


# ---------------------------------------------------------------- batching and passes
def test_cfg_passes_follow_cond_or_uncond(sdxl):
    pos, neg = random_conditioning()
    block = "input_blocks.8.1"
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    x, y_base, kinds = first_call(sdxl, block, pos, neg, cfg=3.0)
    assert sorted(kinds) == [0, 1]
    _, y, kinds2 = first_call(steer(sdxl, sae, passes="positive"), block, pos, neg, cfg=3.0)
    rows = y.shape[0] // len(kinds2)
    for i, kind in enumerate(kinds2):
        chunk = slice(i * rows, (i + 1) * rows)
        assert torch.equal(y[chunk], y_base[chunk]) == (kind == 1)
    # at cfg 1 there is no negative pass: a negative-only edit does nothing
    base1 = sample(sdxl, pos, neg, LATENT, cfg=1.0)
    assert torch.equal(sample(steer(sdxl, sae, passes="negative"), pos, neg, LATENT, cfg=1.0), base1)
    assert not torch.equal(sample(steer(sdxl, sae, passes="positive"), pos, neg, LATENT, cfg=1.0), base1)


def test_batch_of_two_with_a_mask_per_image(sdxl):
    pos, neg = random_conditioning(batch=2)
    latent = torch.zeros(2, 4, 64, 64)
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    masks = torch.stack([torch.zeros(64, 64), torch.ones(64, 64)])
    for cfg in (1.0, 2.5):
        base = sample(sdxl, pos, neg, latent, cfg=cfg)
        out = sample(steer(sdxl, sae, strength=20.0, mask=masks, passes="both"), pos, neg, latent, cfg=cfg)
        assert torch.equal(out[0], base[0]) and not torch.equal(out[1], base[1])


def test_non_square_latent(sdxl):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 48, 80)  # 384 x 640 px
    block = "input_blocks.8.1"
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    mask = torch.zeros(1, 384, 640)
    mask[:, :, :320] = 1.0  # left half
    _, y_base, _ = first_call(sdxl, block, pos, neg, latent)
    _, y, _ = first_call(steer(sdxl, sae, mask=mask), block, pos, neg, latent)
    assert y.shape[-2:] == (12, 20)
    assert torch.equal(y[..., 10:], y_base[..., 10:]) and not torch.equal(y[..., :10], y_base[..., :10])


def test_sd15_output_sae_on_saeuron_block(sd15):
    pos, neg = random_conditioning()
    latent = torch.zeros(1, 4, 32, 32)
    sae = make_sae(128, "unet.up_blocks.1.attentions.2", input_kind="output")
    base = sample(sd15, pos, neg, latent, cfg=5.0)
    assert torch.equal(sample(steer(sd15, sae, mode="scale", strength=0.0), pos, neg, latent, cfg=5.0), base)
    x, y, _ = first_call(sd15, "output_blocks.5.1", pos, neg, latent, cfg=5.0)
    feature = active_feature(sae, x, y)
    ablated = sample(steer(sd15, sae, str(feature), "ablate", passes="both"), pos, neg, latent, cfg=5.0)
    assert not torch.equal(ablated, base)


# ---------------------------------------------------------------- errors name the node and the fix
@pytest.mark.parametrize("kwargs, fragments", [
    ({"features": "99999"}, ["SAE Feature Steer:", "feature 99999 does not exist", "ids 0..255"]),
    ({"features": "5 six"}, ["SAE Feature Steer:", "'5 six' is not a feature id"]),
    ({"block": "up.7.0"}, ["SAE Feature Steer:", "'up.7.0' does not exist", "down.2.1 / down_blocks.2.attentions.1"]),
    ({"block": "down.1.0"}, ["SAE Feature Steer:", "width 128", "64 channels", "with 128 channels: down.2.0"]),
    ({"start_percent": 0.8, "end_percent": 0.2}, ["SAE Feature Steer:", "start_percent 0.8"]),
])
def test_steer_errors(sdxl, kwargs, fragments):
    sae = make_sae(128, "unet.down_blocks.2.attentions.1")
    args = {"features": "5", "mode": "add", "strength": 1.0, **kwargs}
    with pytest.raises(ValueError) as info:
        SAEFeatureSteer.execute(sdxl, sae, args.pop("features"), args.pop("mode"), args.pop("strength"), **args)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_steer_errors_for_models_and_saes_that_do_not_fit(sdxl):
    with pytest.raises(ValueError, match="SAE Feature Steer: this TinySD15 model has no transformer blocks SAE Lab can "
                                         "patch; SAE Lab works with SDXL .* Flux, SD3/3.5, Qwen-Image"):
        steer(build_unet("no_transformer"), make_sae(128, "unet.mid_block.attentions.0"))
    with pytest.raises(ValueError, match="no block of this TinySDXL model has 1280 channels"):
        steer(sdxl, make_sae(1280, "unet.down_blocks.2.attentions.1", n_latents=64))
    with pytest.raises(ValueError, match="does not say which block"):
        steer(sdxl, make_sae(128, None))
    pos, neg = random_conditioning(batch=2)
    bad_mask = steer(sdxl, make_sae(128, "unet.mid_block.attentions.0"), mask=torch.ones(3, 8, 8))
    with pytest.raises(Exception, match="SAE Feature Steer: mask batch 3"):
        sample(bad_mask, pos, neg, torch.zeros(2, 4, 64, 64))


# ---------------------------------------------------------------- Load SAE
def test_loader_lists_and_loads_every_format(sae_models_dir):
    from checkpoint_writers import write_sparsify, write_unbox

    save_sae(make_sae(128, "unet.down_blocks.2.attentions.1"), sae_models_dir / "mine.safetensors")
    write_unbox(sae_models_dir / "unbox", d=32, n=64, k=4)
    write_sparsify(sae_models_dir / "saeuron", d=32, expansion=2, k=4)
    options = SAELoader.define_schema().inputs[0].options
    assert options == ["mine.safetensors", "saeuron/unet.up_blocks.1.attentions.1",
                       "unbox/unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001/final", "none"]
    for name in options[:-1]:
        out = SAELoader.execute(name)
        sae, info = out.result
        assert isinstance(sae, SparseAutoencoder) and info == sae.describe()
        assert out.ui.as_dict()["text"] == (info,)
    with pytest.raises(ValueError, match="Load SAE: no SAE chosen"):
        SAELoader.execute("none")
    with pytest.raises(ValueError, match="Load SAE: sae_name 'gone.safetensors' is not valid; valid: mine.safetensors"):
        SAELoader.execute("gone.safetensors")


def test_loader_hub_download_lands_in_models_sae(sae_models_dir, monkeypatch):
    import huggingface_hub.constants
    from checkpoint_writers import write_sparsify

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Load SAE: could not get bcywinski/SAeUron"):
        SAELoader.execute("none", "bcywinski/SAeUron", "unet.up_blocks.1.attentions.2")
    # what an earlier (online) download left in models/sae is used offline, and listed
    write_sparsify(sae_models_dir / "bcywinski__SAeUron", hook="unet.up_blocks.1.attentions.2", d=32, expansion=2, k=4)
    sae, _ = SAELoader.execute("none", "bcywinski/SAeUron", "unet.up_blocks.1.attentions.2").result
    assert sae.hookpoint == "unet.up_blocks.1.attentions.2"
    assert "bcywinski__SAeUron/unet.up_blocks.1.attentions.2" in SAELoader.define_schema().inputs[0].options


def test_comfy_unet_to_diffusers_is_what_the_layout_uses(sdxl):
    key_map = comfy.utils.unet_to_diffusers(sdxl.model.model_config.unet_config)
    assert key_map["down_blocks.2.attentions.1.proj_in.weight"] == "input_blocks.8.1.proj_in.weight"


def test_every_node_schema_is_valid_for_this_comfyui():
    import asyncio

    extension = asyncio.run(pack.comfy_entrypoint())
    for node_cls in asyncio.run(extension.get_node_list()):
        schema = node_cls.GET_SCHEMA()
        assert schema.node_id.startswith("SAE") and schema.description and schema.display_name
        node_cls.INPUT_TYPES()
        for item in schema.inputs:
            assert item.tooltip or item.id in ("model", "sae"), f"{schema.node_id}.{item.id} has no tooltip"


def test_call_context_in_a_real_run_gives_passes_and_steps(sdxl):
    from sae_lab_pack.nodes.patching import install_block_patch
    from sae_lab_pack.sae_core.blocks.patch import BlockPatch

    seen = []

    class Spy(BlockPatch):
        def __call__(self, view, ctx):
            seen.append(ctx)
            return None

    spy = Spy()

    block = model_block_layout(sdxl).resolve("mid.0")
    pos, neg = random_conditioning()
    sample(install_block_patch(sdxl, block, spy, "spy"), pos, neg, LATENT, steps=3, cfg=2.0)
    assert [c.step for c in seen] == [0, 1, 2]
    assert all(c.n_steps == 3 and sorted(c.chunk_kinds) == [0, 1] for c in seen)
    assert seen[0].sigma > seen[1].sigma > seen[2].sigma > 0
