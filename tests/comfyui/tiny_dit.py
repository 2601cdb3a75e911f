"""Tiny Flux, SD3 (MMDiT-X, as SD3.5 medium) and Qwen-Image models built with ComfyUI's own classes, for tests
without real weights. They keep the real block structure (double + single blocks, joint blocks, dual-stream
blocks), patch size 2, the real latent channels and the models' own conditioning, at a width of 64-128.
Config keys a ComfyUI version does not know (newer FluxParams fields, say) are left out for it.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch

import comfy.ldm.flux.model
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.ldm.qwen_image.model
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.taesd.taesd
from tiny_models import CPU, LOAD_DEVICE, _init_weights

CONTEXT = 32   # text-embedding width of the tiny models
POOLED = 16    # pooled text vector (Flux vector_in, SD3 adm)

FLUX_CONFIG = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": POOLED,
               "context_in_dim": CONTEXT, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 4, "depth": 2,
               "depth_single_blocks": 3, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True,
               "guidance_embed": False, "txt_ids_dims": []}
# Flux.2's layout (comfy.model_detection): 128 latent channels, no patchifying (patch 1), shared modulation, 4 RoPE
# axes, reference latents placed by index; ComfyUI 0.33+
FLUX2_CONFIG = {**FLUX_CONFIG, "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
                "axes_dim": [4, 4, 4, 4], "theta": 2000, "patch_size": 1, "qkv_bias": False, "txt_ids_dims": [3],
                "global_modulation": True, "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
                "ref_index_scale": 10.0, "mlp_ratio": 3.0}
SD3_CONFIG = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
              "adm_in_channels": POOLED, "pos_embed_scaling_factor": None, "pos_embed_max_size": 32,
              "num_patches": 1024, "qk_norm": "rms", "x_block_self_attn_layers": [0],
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": CONTEXT, "out_features": 128}}}
QWEN_CONFIG = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 3,
               "attention_head_dim": 16, "num_attention_heads": 4, "joint_attention_dim": CONTEXT,
               "axes_dims_rope": (4, 6, 6)}


class TinyFlux(comfy.supported_models.FluxSchnell):
    """Flux schnell's model class (flow matching, guidance-free, cfg 1) with a 64-wide transformer."""


TinyFlux2 = type("TinyFlux2", (comfy.supported_models.Flux2,), {"__doc__": "Flux.2's model class, 64 wide."}) \
    if hasattr(comfy.supported_models, "Flux2") else None


class TinySD3(comfy.supported_models.SD3):
    """SD3's model class (real CFG) with a 128-wide MMDiT-X."""


class TinyQwenImage(comfy.supported_models.QwenImage):
    """Qwen-Image's model class (real CFG, edit models add reference latents) with a 64-wide transformer."""


def _known(config: dict, accepted: set[str]) -> dict:
    return {k: v for k, v in config.items() if k in accepted or k == "image_model"}


def _flux_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}


def _init_keys(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


FAMILIES = {
    "flux": (TinyFlux, lambda: _known(FLUX_CONFIG, _flux_keys())),
    "flux2": (TinyFlux2, lambda: _known(FLUX2_CONFIG, _flux_keys())),
    "sd3": (TinySD3, lambda: _known(SD3_CONFIG, _init_keys(comfy.ldm.modules.diffusionmodules.mmdit.MMDiT))),
    "qwen_image": (TinyQwenImage,
                   lambda: _known(QWEN_CONFIG, _init_keys(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel))),
}
LATENT_CHANNELS = 16


def build_dit(family: str, seed: int = 0):
    """A ModelPatcher around a tiny DiT of the given family (``flux``, ``sd3``, ``qwen_image``)."""
    config_cls, config = FAMILIES[family]
    model = config_cls(config()).get_model({}, device=CPU)
    _init_weights(model.diffusion_model, seed)
    pos_embed = getattr(model.diffusion_model, "pos_embed", None)  # MMDiT's is a buffer left uninitialised
    if isinstance(pos_embed, torch.Tensor):
        with torch.no_grad():
            pos_embed.copy_(0.1 * torch.randn(pos_embed.shape, generator=torch.Generator().manual_seed(seed)))
    return comfy.model_patcher.ModelPatcher(model, load_device=LOAD_DEVICE, offload_device=CPU)


def dit_conditioning(family: str, batch: int = 1, seed: int = 0, tokens: int = 10):
    """(positive, negative) of the shapes each family's model takes."""
    g = torch.Generator().manual_seed(seed)

    def one():
        extras = {} if family == "qwen_image" else {"pooled_output": torch.randn(batch, POOLED, generator=g)}
        return [[torch.randn(batch, tokens, CONTEXT, generator=g), extras]]

    return one(), one()


def with_reference(conditioning, latent: torch.Tensor):
    """The conditioning with a reference latent (Flux Kontext / Qwen-Image edit), as ReferenceLatent sets it."""
    return [[c, {**extras, "reference_latents": [latent]}] for c, extras in conditioning]


def image_tokens(sequence: torch.Tensor, kind: str, n: int, refs: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the generated image's n tokens, the rest) of a block's img sequence: single blocks hold cat(txt, img, refs),
    double blocks img then refs."""
    start = sequence.shape[1] - n - refs if kind == "single_block" else 0
    return sequence[:, start:start + n], torch.cat([sequence[:, :start], sequence[:, start + n:]], dim=1)


class DiTProbe:
    """Records (img in, out dict, cond_or_uncond) of every call of one DiT block, as the outermost replacement
    (it calls whatever replacement is already there, e.g. SAE Lab's)."""

    def __init__(self, model, kind: str, index: int):
        self.calls: list[tuple[torch.Tensor, dict, list]] = []
        self.model = model.clone()
        dit = self.model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        previous = dit.get((kind, index))

        def replacement(args, extra):
            x = args["img"].detach().clone()  # before the block: Flux's blocks add to their input in place
            out = previous(args, extra) if previous is not None else extra["original_block"](args)
            options = args.get("transformer_options") or {}
            self.calls.append((x, {k: v.detach().clone() for k, v in out.items()
                                                              if isinstance(v, torch.Tensor)},
                               list(options.get("cond_or_uncond", []))))
            return out

        self.model.set_model_patch_replace(replacement, "dit", kind, index)


def sample(model, positive, negative, latent: torch.Tensor, steps: int = 2, cfg: float = 1.0, seed: int = 0):
    """ComfyUI's KSampler path on a latent tensor (simple scheduler, as flow models use)."""
    import nodes

    return nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative,
                                 {"samples": latent}, denoise=1.0)[0]["samples"]


class TinyVideoLatentVAE(comfy.sd.VAE):
    """ComfyUI's VAE around a 16-channel TAESD, for latents that may carry a frame axis: Qwen-Image samples
    (B, 16, 1, H, W) latents (Wan 2.1's latent format) and its real VAE decodes them; here frames are folded
    into the batch, as VAE Decode does with a video VAE's images."""

    def decode(self, samples_in, *args, **kwargs):
        if samples_in.ndim == 5:
            b, c, t, h, w = samples_in.shape
            samples_in = samples_in.movedim(2, 1).reshape(b * t, c, h, w)
        return super().decode(samples_in, *args, **kwargs)


def build_vae(family: str = "flux", seed: int = 0):
    """A VAE for the family's 16-channel latents: ComfyUI's TAESD with random weights (detected from its state
    dict, as tiny_models.build_vae does for 4 channels); Qwen-Image's also takes its 5-D latents."""
    taesd = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS)
    _init_weights(taesd, seed)
    cls = TinyVideoLatentVAE if family == "qwen_image" else comfy.sd.VAE
    return cls(sd=taesd.state_dict())
