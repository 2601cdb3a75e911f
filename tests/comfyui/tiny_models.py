"""Tiny SDXL- and SD1.5-layout models built with ComfyUI's own classes, for tests without real weights.

The U-Nets keep the real block structure (every transformer block path and the real transformer
depths) at 32 base channels. Text conditioning comes from a bag-of-words encoder (prompts sharing a
word share part of their embedding), and the VAE is ComfyUI's TAESD architecture with random weights.
"""
from __future__ import annotations

import zlib

import torch
from devices import DEVICE

import comfy.model_patcher  # callers set up ComfyUI first (comfy_harness, or a running server)
import comfy.sd
import comfy.supported_models
import comfy.taesd.taesd
import nodes

CPU = torch.device("cpu")
LOAD_DEVICE = DEVICE  # where ComfyUI runs the tiny models: SAE_LAB_DEVICE (the CPU by default)

_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "dtype": torch.float32, "in_channels": 4, "model_channels": 32, "context_dim": 64,
           "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL_CONFIG = {**_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
               "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
               "use_linear_in_transformer": True, "num_head_channels": 16,
               "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
SD15_CONFIG = {**_COMMON, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
               "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
               "transformer_depth_middle": 1, "use_linear_in_transformer": False, "num_heads": 8,
               "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
NO_TRANSFORMER_CONFIG = {**SD15_CONFIG, "transformer_depth": [0] * 8, "transformer_depth_middle": -1,
                         "transformer_depth_output": [0] * 12}
POOLED_DIM = 1280


class TinySDXL(comfy.supported_models.SDXL):
    """SDXL's model class (EPS, SDXL latent format and ADM) with a 32-channel U-Net."""


class TinySD15(comfy.supported_models.SD15):
    """SD1.5's model class with a 32-channel U-Net."""


FAMILIES = {"sdxl": (TinySDXL, SDXL_CONFIG), "sd15": (TinySD15, SD15_CONFIG),
            "no_transformer": (TinySD15, NO_TRANSFORMER_CONFIG)}


@torch.no_grad()
def _init_weights(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's layers skip initialisation; give every weight a deterministic, well-scaled value."""
    g = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.copy_(torch.randn(param.shape, generator=g) / param[0].numel() ** 0.5)
        elif name.endswith("weight"):
            param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=g))
        else:
            param.copy_(0.05 * torch.randn(param.shape, generator=g))


def build_unet(family: str = "sdxl", seed: int = 0):
    """A ModelPatcher around a tiny U-Net of the given layout (``sdxl``, ``sd15``, ``no_transformer``)."""
    config_cls, unet_config = FAMILIES[family]
    model_config = config_cls(dict(unet_config))
    model = model_config.get_model({}, device=CPU)
    _init_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=LOAD_DEVICE, offload_device=CPU)


class TinyTextEncoder:
    """A CLIP stand-in: every word has a fixed random embedding; context = word vectors, pooled = their mean.

    Implements what CLIPTextEncode and this pack call: ``tokenize`` and ``encode_from_tokens_scheduled``.
    """

    def __init__(self, context_dim: int = 64, pooled_dim: int = POOLED_DIM, length: int = 77):
        self.context_dim, self.pooled_dim, self.length = context_dim, pooled_dim, length

    def _vector(self, word: str, dim: int, salt: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode()) * 7 + salt)
        return torch.randn(dim, generator=g)

    def tokenize(self, text: str, **kwargs):
        return [w for w in text.lower().replace(",", " ").split() if w][: self.length]

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        words = list(tokens) or ["<empty>"]
        cond = torch.stack([self._vector("<pad>", self.context_dim, 0)] * self.length)
        for i, word in enumerate(words):
            cond[i] = self._vector(word, self.context_dim, 0)
        pooled = torch.stack([self._vector(w, self.pooled_dim, 1) for w in words]).mean(0)
        cond, pooled = cond[None], pooled[None]
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        cond, pooled = self.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled, **(add_dict or {})}]]


def encode(text_encoder: TinyTextEncoder, text: str):
    return text_encoder.encode_from_tokens_scheduled(text_encoder.tokenize(text))


def build_vae(seed: int = 0):
    """ComfyUI's VAE wrapper around a randomly initialised TAESD (detected from its state dict)."""
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    _init_weights(taesd, seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def random_conditioning(batch: int = 1, seed: int = 0, context_dim: int = 64):
    """(positive, negative) of the right shapes for both tiny layouts."""
    g = torch.Generator().manual_seed(seed)

    def one():
        return [[torch.randn(batch, 77, context_dim, generator=g),
                 {"pooled_output": torch.randn(batch, POOLED_DIM, generator=g)}]]

    return one(), one()


def sample(model, positive, negative, latent: torch.Tensor, steps: int = 2, cfg: float = 1.0, seed: int = 0,
           sampler: str = "euler", scheduler: str = "normal") -> torch.Tensor:
    """ComfyUI's KSampler path (nodes.common_ksampler) on a latent tensor; returns the denoised latent."""
    return nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative,
                                 {"samples": latent}, denoise=1.0)[0]["samples"]


class BlockProbe:
    """Records (x_in, y_out, cond_or_uncond) of every call of one block, as the outermost patch."""

    def __init__(self, model, comfy_path: str):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, list]] = []
        self.model = model.clone()
        key = f"diffusion_model.{comfy_path}.forward"
        inner = self.model.get_model_object(key)

        def forward(x, *args, **kwargs):
            y = inner(x, *args, **kwargs)
            options = kwargs.get("transformer_options") or next((a for a in args if isinstance(a, dict)), {})
            self.calls.append((x.detach().clone(), y.detach().clone(), list(options.get("cond_or_uncond", []))))
            return y

        self.model.add_object_patch(key, forward)


# ---------------------------------------------------------------- tiny CLIP (vision + text) with ComfyUI's classes
TINY_CLIP_DIM = 32  # the joint (projection) space of the tiny CLIP pair
TINY_VISION_CONFIG = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 48,
                      "image_size": 32, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 96,
                      "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 2,
                      "num_channels": 3, "num_hidden_layers": 2, "patch_size": 8, "projection_dim": TINY_CLIP_DIM,
                      "torch_dtype": "float32"}
TINY_TEXT_CONFIG = {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
                    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": TINY_CLIP_DIM,
                    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 80,
                    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
                    "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 1,
                    "projection_dim": TINY_CLIP_DIM, "torch_dtype": "float32", "vocab_size": 49408}


def build_clip_vision(seed: int = 0, projection_dim: int = TINY_CLIP_DIM):
    """ComfyUI's ClipVisionModel (what Load CLIP Vision gives) at a tiny width: 32 px images, 32-d embeddings
    (ComfyUI's CLIP text models project to their own width, as CLIP-L (768) and CLIP-G (1280) do)."""
    import json
    import tempfile

    import comfy.clip_vision

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({**TINY_VISION_CONFIG, "projection_dim": projection_dim}, f)
    vision = comfy.clip_vision.ClipVisionModel(f.name)
    _init_weights(vision.model, seed)
    return vision


def build_clip_text(seed: int = 0, projected: bool = True):
    """ComfyUI's CLIP (what a checkpoint loader gives) around a tiny CLIP-L text model with SD1.5's tokenizer.
    ``projected``: its pooled output goes through its (random) text projection, as SDXL's CLIP-G does; otherwise
    it is unprojected, as for SD1.5 checkpoints."""
    import comfy.sd1_clip
    import comfy.supported_models_base

    class TextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                             textmodel_json_config=dict(TINY_TEXT_CONFIG), return_projected_pooled=projected)

    class Encoder(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {}, clip_model=TextModel)

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, Encoder)
    clip = comfy.sd.CLIP(target=target)
    _init_weights(clip.cond_stage_model, seed)
    return clip
