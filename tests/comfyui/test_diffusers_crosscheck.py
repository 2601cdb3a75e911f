"""The block SAE Lab patches under a diffusers hookpoint computes the same image-stream update as that block of
the diffusers model, given the same weights.

SAE checkpoints name their block in diffusers' notation (``transformer.single_transformer_blocks.5``,
``unet.down_blocks.2.attentions.1``) and were trained on what that diffusers block writes; SAE Lab resolves the name
to a ComfyUI block and hands the SAE that block's update (output - input). Here each tiny ComfyUI model
(``tiny_dit.build_dit``, ``tiny_models.build_unet``) is rebuilt as a diffusers model of the same shape, its weights
copied with ComfyUI's own diffusers key maps (``comfy.utils.flux_to_diffusers``, ``mmdit_to_diffusers``,
``unet_to_diffusers``: diffusers key -> ComfyUI key, fused qkv as ``(key, (dim, start, length))`` slices and
``(key, None, fn)`` transforms, read the way ``comfy.model_detection.convert_diffusers_mmdit`` reads them). ComfyUI's
sampler runs one step; SAE Lab's own ``install_block_patch`` records ``view.sae_input("diff")`` of every block, and a
pre-hook records what the diffusion model was called with. The diffusers model then runs on exactly those inputs,
with forward hooks on its blocks, and every block's image-token update must agree to 1e-4 of its largest value
(fp32). Flux single blocks see ``cat(txt, img)`` in ComfyUI; only image tokens are compared (SAE Lab's view takes
them; diffusers' block returns them apart).

One config differs from the other tests' tiny Flux: its MLP ratio is 4, not 2. diffusers cannot build another one
(``FluxTransformerBlock`` hard-codes ``FeedForward(dim, dim_out=dim)``, i.e. 4 x dim, and
``FluxTransformer2DModel`` passes no ``mlp_ratio`` to its single blocks), and ComfyUI's ``flux_to_diffusers``
hard-codes the single blocks' ``proj_mlp`` as rows ``3h:7h`` of ``linear1``, so no other ratio can be mapped either.
Real Flux models use 4. Everything else is ``build_dit``'s and ``build_unet``'s own configuration.
"""
from __future__ import annotations

import functools

import pytest
import torch

import comfy_harness  # noqa: I001  (first: skips without COMFYUI_PATH, sets up ComfyUI)

pytest.importorskip("diffusers", reason="the diffusers cross-check needs diffusers (pip install diffusers)")

import tiny_dit
from tiny_dit import LATENT_CHANNELS, build_dit, dit_conditioning
from tiny_models import POOLED_DIM, build_unet, random_conditioning, sample

import comfy.utils

comfy_harness.load_pack()
from sae_lab_pack.nodes.patching import install_block_patch, model_block_layout  # noqa: E402
from sae_lab_pack.sae_core.blocks.names import strip_prefix  # noqa: E402
from sae_lab_pack.sae_core.blocks.patch import BlockPatch  # noqa: E402

TOLERANCE = 1e-4          # max |comfy - diffusers| / max |diffusers|, per block, fp32
DIT_LATENT = (16, 24)     # 8 x 12 tokens: a non-square grid catches a transposed row/column order
UNET_LATENT = (32, 48)
SDXL_SIZE = {"width": 384, "height": 256, "crop_w": 16, "crop_h": 8, "target_width": 320, "target_height": 192}

# diffusers configs of the same shapes as the tiny ComfyUI models (tiny_dit.py, tiny_models.py).
FLUX = {"patch_size": 1, "in_channels": LATENT_CHANNELS * 4, "num_layers": 2, "num_single_layers": 3,
        "attention_head_dim": 16, "num_attention_heads": 4, "joint_attention_dim": tiny_dit.CONTEXT,
        "pooled_projection_dim": tiny_dit.POOLED, "guidance_embeds": False, "axes_dims_rope": (4, 6, 6)}
SD3 = {"sample_size": 32, "patch_size": 2, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
       "num_layers": 2, "attention_head_dim": 64, "num_attention_heads": 2, "joint_attention_dim": tiny_dit.CONTEXT,
       "caption_projection_dim": 128, "pooled_projection_dim": tiny_dit.POOLED, "pos_embed_max_size": 32,
       "dual_attention_layers": (0,), "qk_norm": "rms_norm"}  # MMDiT-X: hidden 64 x depth, depth heads of 64
# The U-Nets' heads ("attention_head_dim", diffusers' legacy name for heads per level) come from heads_per_level.
SDXL = {"sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64, 128),
        "layers_per_block": 2, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 64, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816}
SD15 = {"sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64, 128, 128),
        "layers_per_block": 2, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 64,
        "use_linear_projection": False}

FLUX_BLOCKS = [f"transformer.transformer_blocks.{i}" for i in range(2)] + \
    [f"transformer.single_transformer_blocks.{i}" for i in range(3)]
SD3_BLOCKS = [f"transformer.transformer_blocks.{i}" for i in range(2)]
SDXL_BLOCKS = ["unet.down_blocks.1.attentions.0", "unet.down_blocks.2.attentions.1", "unet.mid_block.attentions.0",
               "unet.up_blocks.0.attentions.1", "unet.up_blocks.1.attentions.2"]
SD15_BLOCKS = ["unet.down_blocks.0.attentions.0", "unet.mid_block.attentions.0", "unet.up_blocks.1.attentions.1",
               "unet.up_blocks.1.attentions.2", "unet.up_blocks.3.attentions.2"]
BLOCKS = {"flux": FLUX_BLOCKS, "sd3": SD3_BLOCKS, "sdxl": SDXL_BLOCKS, "sd15": SD15_BLOCKS}


def diffusers_weights(key_map: dict, comfy_sd: dict[str, torch.Tensor], keys) -> tuple[dict, set[str]]:
    """The diffusers weights ``keys`` that ComfyUI's key map makes of ``comfy_sd``, and the ComfyUI keys it read.

    Entries are ``comfy_key``, ``(comfy_key, (dim, start, length))`` (a slice of a fused tensor) or
    ``(comfy_key, None, fn)`` with ``comfy = fn(diffusers)``; the maps' ``fn`` (swap_scale_shift) is its own inverse,
    which is checked before it is applied.
    """
    out, used = {}, set()
    for diffusers_key, target in key_map.items():
        source, narrow, fn = (target, None, None) if isinstance(target, str) else \
            (target[0], target[1], target[2] if len(target) > 2 else None)
        if diffusers_key not in keys or source not in comfy_sd:
            continue  # another variant's key (guidance, controlnet, LoKr names, SD2 unCLIP's class_embedding)
        weight = comfy_sd[source]
        if narrow is not None:
            weight = weight.narrow(*narrow)
        if fn is not None:
            assert torch.equal(fn(fn(weight)), weight), f"{source}: {fn.__name__} is not its own inverse"
            weight = fn(weight)
        out[diffusers_key] = weight.clone()
        used.add(source)
    return out, used


def load_from_comfy(diffusers_model: torch.nn.Module, key_map: dict, comfy_model: torch.nn.Module) -> None:
    """Every diffusers weight from ComfyUI's, through the key map; every ComfyUI weight must be used."""
    comfy_sd = comfy_model.state_dict()
    weights, used = diffusers_weights(key_map, comfy_sd, set(diffusers_model.state_dict()))
    diffusers_model.load_state_dict(weights, strict=True)  # missing or unexpected keys fail here
    assert used == set(comfy_sd), f"ComfyUI weights the key map left out: {sorted(set(comfy_sd) - used)[:8]}"
    diffusers_model.eval()


class UpdateRecorder(BlockPatch):
    """A BlockPatch recording the update SAE Lab gives an SAE (``view.sae_input("diff")``); it changes nothing."""

    def __init__(self):
        self.updates: list[torch.Tensor] = []

    def __call__(self, view, ctx):
        self.updates.append(view.sae_input("diff").detach().clone())
        return None


def comfy_updates(model, hookpoints: list[str], positive, negative, latent: torch.Tensor, scheduler: str):
    """One sampler step through SAE Lab's patches: each block's updates, and the diffusion model's inputs."""
    layout = model_block_layout(model)
    recorders = {h: UpdateRecorder() for h in hookpoints}
    patched = model
    for hookpoint, recorder in recorders.items():
        patched = install_block_patch(patched, layout.resolve(hookpoint), recorder, "diffusers cross-check")
    calls = []

    def record_inputs(module, args, kwargs):  # BaseModel calls diffusion_model(x, t, context=..., **extra_conds)
        inputs = {"x": args[0], "t": args[1], "context": kwargs.get("context"), "y": kwargs.get("y")}
        calls.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})

    diffusion_model = patched.get_model_object("diffusion_model")
    handle = diffusion_model.register_forward_pre_hook(record_inputs, with_kwargs=True)
    try:
        with torch.no_grad():
            sample(patched, positive, negative, latent, steps=1, cfg=2.0, scheduler=scheduler)
    finally:
        handle.remove()
    assert calls, "the sampler never called the diffusion model"
    return {h: r.updates for h, r in recorders.items()}, calls


def diffusers_updates(model: torch.nn.Module, hookpoints: list[str], run) -> dict[str, list[torch.Tensor]]:
    """Each named block's updates (output - input of its image stream) while ``run()`` calls the model; a token
    block's image tokens are the last ones of its ``hidden_states`` (all of them in today's diffusers)."""
    updates = {h: [] for h in hookpoints}
    handles = []
    for hookpoint in hookpoints:
        def hook(module, args, kwargs, output, hookpoint=hookpoint):
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            y = output[-1] if isinstance(output, tuple) else getattr(output, "sample", output)
            n = y.shape[1] if y.ndim == 3 else None
            updates[hookpoint].append((y - x[:, -n:] if n else y - x).detach().clone())
        module = model.get_submodule(strip_prefix(hookpoint))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return updates


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cross_check_flux():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tiny_dit.FLUX_CONFIG, "mlp_ratio", 4.0)  # see the module docstring
        model = build_dit("flux", seed=3)
    transformer = FluxTransformer2DModel(**FLUX)
    load_from_comfy(transformer, comfy.utils.flux_to_diffusers(model.model.model_config.unet_config,
                                                               output_prefix=""), model.model.diffusion_model)
    pos, neg = dit_conditioning("flux", seed=4)
    latent = torch.randn(1, LATENT_CHANNELS, *DIT_LATENT, generator=_generator(5))
    ours, calls = comfy_updates(model, FLUX_BLOCKS, pos, neg, latent, "simple")

    def run():
        for call in calls:
            x = call["x"]
            b, c, h, w = x.shape
            transformer(hidden_states=FluxPipeline._pack_latents(x, b, c, h, w),
                        encoder_hidden_states=call["context"], pooled_projections=call["y"],
                        timestep=call["t"], img_ids=FluxPipeline._prepare_latent_image_ids(
                            b, h // 2, w // 2, x.device, x.dtype),
                        txt_ids=torch.zeros(call["context"].shape[1], 3), return_dict=False)

    return ours, diffusers_updates(transformer, FLUX_BLOCKS, run), (DIT_LATENT[0] // 2, DIT_LATENT[1] // 2)


def cross_check_sd3():
    from diffusers import SD3Transformer2DModel

    model = build_dit("sd3", seed=3)
    transformer = SD3Transformer2DModel(**SD3)
    load_from_comfy(transformer, comfy.utils.mmdit_to_diffusers(model.model.model_config.unet_config,
                                                                output_prefix=""), model.model.diffusion_model)
    pos, neg = dit_conditioning("sd3", seed=4)
    latent = torch.randn(1, LATENT_CHANNELS, *DIT_LATENT, generator=_generator(5))
    ours, calls = comfy_updates(model, SD3_BLOCKS, pos, neg, latent, "simple")

    def run():
        for call in calls:
            transformer(hidden_states=call["x"], encoder_hidden_states=call["context"],
                        pooled_projections=call["y"], timestep=call["t"], return_dict=False)

    return ours, diffusers_updates(transformer, SD3_BLOCKS, run), (DIT_LATENT[0] // 2, DIT_LATENT[1] // 2)


def heads_per_level(unet_config: dict, widths: tuple[int, ...]) -> tuple[int, ...]:
    """The heads of each level as ComfyUI built them: its model classes set them (SDXL: heads of 64 channels, which
    overrides tiny_models' 16; SD1.5: 8 heads of any width)."""
    if unet_config.get("num_head_channels", -1) != -1:
        return tuple(max(1, w // unet_config["num_head_channels"]) for w in widths)
    return (unet_config["num_heads"],) * len(widths)


def cross_check_unet(family: str):
    from diffusers import UNet2DConditionModel

    model = build_unet(family, seed=3)
    config = SDXL if family == "sdxl" else SD15
    unet = UNet2DConditionModel(**config, attention_head_dim=heads_per_level(
        model.model.model_config.unet_config, config["block_out_channels"]))
    load_from_comfy(unet, comfy.utils.unet_to_diffusers(model.model.model_config.unet_config),
                    model.model.diffusion_model)
    extras = SDXL_SIZE if family == "sdxl" else {}
    pos, neg = ([[c, {**e, **extras}] for c, e in cond] for cond in random_conditioning(seed=4))
    latent = torch.randn(1, 4, *UNET_LATENT, generator=_generator(5))
    hookpoints = BLOCKS[family]
    ours, calls = comfy_updates(model, hookpoints, pos, neg, latent, "normal")
    # SDXL's ADM vector: the pooled text embedding, then size/crop/target embeddings (diffusers' time_ids order)
    time_ids = torch.tensor([[SDXL_SIZE[k] for k in ("height", "width", "crop_h", "crop_w", "target_height",
                                                      "target_width")]], dtype=torch.float32)

    def run():
        for call in calls:
            x = call["x"]
            added = {"text_embeds": call["y"][:, :POOLED_DIM], "time_ids": time_ids.expand(x.shape[0], -1)} \
                if family == "sdxl" else None
            unet(x, call["t"], encoder_hidden_states=call["context"], added_cond_kwargs=added,
                 return_dict=False)

    return ours, diffusers_updates(unet, hookpoints, run), None


@functools.cache
def cross_check(family: str):
    """(SAE Lab's updates, diffusers' updates, token grid) per hookpoint, for one model (computed once).

    On one thread: these models are thousands of tiny ops, and on a busy 2-core machine OpenMP's waits made one
    tiny-SDXL forward take 27 s on two threads, 0.5 s on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        dits = {"flux": cross_check_flux, "sd3": cross_check_sd3}
        return dits[family]() if family in dits else cross_check_unet(family)
    finally:
        torch.set_num_threads(threads)


def as_grid(update: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """diffusers' update as (N, h, w, C): token blocks give (N, h*w, C) row by row, U-Net blocks (N, C, h, w)."""
    return update.reshape(update.shape[0], *grid, update.shape[-1]) if grid else update.permute(0, 2, 3, 1)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def compared(family: str, hookpoint: str, reference_hookpoint: str | None = None):
    """SAE Lab's updates of ``hookpoint`` and diffusers' of ``reference_hookpoint`` (default: the same), per call."""
    sae_lab, theirs, grid = cross_check(family)
    ours, reference = sae_lab[hookpoint], theirs[reference_hookpoint or hookpoint]
    assert ours and len(ours) == len(reference), f"{len(ours)} ComfyUI calls of the block, {len(reference)} diffusers"
    return [(a, as_grid(b, grid)) for a, b in zip(ours, reference)]


@pytest.mark.parametrize("family, hookpoint", [(f, h) for f, hs in BLOCKS.items() for h in hs])
def test_the_block_sae_lab_patches_computes_the_diffusers_blocks_update(family, hookpoint):
    """What an SAE of this hookpoint reads in SAE Lab (the patched ComfyUI block's update at each image position)
    is what the diffusers block of that name writes there."""
    for ours, reference in compared(family, hookpoint):
        assert ours.shape == reference.shape
        assert reference.abs().max() > 1e-3, "the diffusers block wrote no update: nothing would be compared"
        assert ours.abs().max() > 0, (
            f"{hookpoint}: SAE Lab's view gives an update of exactly zero where the diffusers block writes up to "
            f"{float(reference.abs().max()):.2f}: the input it subtracts already holds the block's output (does the "
            f"ComfyUI block add to its input tensor in place?)")
        error = relative_error(ours, reference)
        assert error <= TOLERANCE, f"{hookpoint}: SAE Lab's update differs from diffusers' by {error:.2e} (relative)"


@pytest.mark.parametrize("family, hookpoint, other", [
    ("flux", "transformer.transformer_blocks.0", "transformer.transformer_blocks.1"),
    ("flux", "transformer.single_transformer_blocks.1", "transformer.single_transformer_blocks.2"),
    ("sd3", "transformer.transformer_blocks.0", "transformer.transformer_blocks.1"),
    ("sdxl", "unet.up_blocks.0.attentions.1", "unet.mid_block.attentions.0"),
    ("sd15", "unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"),
])
def test_the_comparison_tells_neighbouring_blocks_apart(family, hookpoint, other):
    """The check has teeth: another block of the same width and grid is far off."""
    for ours, reference in compared(family, hookpoint, other):
        assert relative_error(ours, reference) > 100 * TOLERANCE
