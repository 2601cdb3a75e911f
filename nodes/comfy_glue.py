"""The few places where SAE Lab touches ComfyUI internals: model folders, block layout, block patches.

Patches are object patches on a ModelPatcher *clone* (key ``diffusion_model.<block>.forward``): the
shared module and its weights are never modified, patches chain, and ComfyUI removes them after
each run so the base model is bit-identical afterwards.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import torch

import comfy.utils
import folder_paths
from comfy.ldm.modules.attention import SpatialTransformer
from comfy_api.latest import io

from ..sae_core.block_call import CallContext, StepWindow
from ..sae_core.blocks import Block, BlockLayout
from ..sae_core.errors import SAEError, SAEInputError

log = logging.getLogger("sae_lab")

SAE = io.Custom("SAE")
SAE_FOLDER = "sae"

BlockPatch = Callable[[torch.Tensor, torch.Tensor, CallContext], torch.Tensor]


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Add ``models/<name>`` (keeping any paths extra_model_paths.yaml already gave it)."""
    default = os.path.join(folder_paths.models_dir, name)
    if name in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[name]
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)
    else:
        folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def model_folder_paths(name: str) -> list[str]:
    return folder_paths.get_folder_paths(name)


def image_tensor(*pictures) -> torch.Tensor:
    """PIL images of one size as ComfyUI's IMAGE: (B, H, W, 3) floats in [0, 1]."""
    arrays = [np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pictures]
    return torch.from_numpy(np.stack(arrays))


def node_error(node: str, exc: Exception) -> ValueError:
    """The error ComfyUI shows: the node's name first, then what was wrong and what would be valid."""
    return ValueError(f"{node}: {exc}")


def model_block_layout(model) -> BlockLayout:
    """The transformer blocks of the loaded model, derived from ComfyUI's own diffusers key map."""
    config = getattr(model.model, "model_config", None)
    family = type(config).__name__ if config is not None else type(model.model).__name__
    unet_config = getattr(config, "unet_config", None) or {}
    diffusion_model = model.get_model_object("diffusion_model")
    channels = {name: module.in_channels for name, module in diffusion_model.named_modules()
                if isinstance(module, SpatialTransformer)}
    layout = BlockLayout.from_key_map(family, comfy.utils.unet_to_diffusers(unet_config), channels)
    if not len(layout):
        raise SAEInputError(f"this {family} model has no U-Net transformer blocks an SAE can attach to; "
                            f"SAE Lab works with SDXL (Turbo, base) and SD1.5-family U-Nets")
    return layout


def resolve_block(model, sae, block_text: str) -> Block:
    """The block named by the user, or the SAE's own hookpoint when left empty; widths must match."""
    layout = model_block_layout(model)
    text = (block_text or "").strip() or (sae.hookpoint or "")
    if not text:
        raise SAEInputError(f"this SAE does not say which block it was trained on; type a block, one of: "
                            f"{layout.valid_names()}")
    block = layout.resolve(text)
    if block.channels != sae.d_in:
        fitting = [b.short for b in layout if b.channels == sae.d_in]
        hint = f"blocks of this model with {sae.d_in} channels: {', '.join(fitting)}" if fitting else \
            f"no block of this {layout.family} model has {sae.d_in} channels; use an SAE trained for this model"
        raise SAEInputError(f"the SAE has width {sae.d_in} but block {block.label()} has {block.channels} "
                            f"channels; {hint}")
    return block


def step_window(model, start_percent: float, end_percent: float) -> StepWindow:
    """Sigma window for start/end percent of the schedule, like ControlNet's timestep range."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise SAEInputError(f"start_percent {start_percent} and end_percent {end_percent} must satisfy "
                            f"0 <= start <= end <= 1")
    sampling = model.get_model_object("model_sampling")
    return StepWindow(sigma_start=float(sampling.percent_to_sigma(start_percent)),
                      sigma_end=float(sampling.percent_to_sigma(end_percent)))


def call_context(transformer_options: dict) -> CallContext:
    kinds = tuple(int(k) for k in (transformer_options.get("cond_or_uncond") or (0,)))
    sigmas = transformer_options.get("sigmas")
    sigma = float(sigmas.max()) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
    schedule = transformer_options.get("sample_sigmas")
    schedule = tuple(schedule.tolist()) if isinstance(schedule, torch.Tensor) else None
    return CallContext(kinds, sigma, schedule)


def transformer_options_of(args: tuple, kwargs: dict) -> dict:
    """ComfyUI's transformer_options from a block call, wherever the caller put it.

    ``SpatialTransformer.forward(x, context=None, transformer_options={})`` is called positionally by
    ``forward_timestep_embed`` today; a keyword, another position or a newer signature must work too.
    """
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    return next((a for a in reversed(args) if isinstance(a, dict)), {})


def install_block_patch(model, block: Block, patch: BlockPatch, label: str):
    """A clone of ``model`` whose ``block`` output goes through ``patch(x_in, y_out, ctx)``."""
    patched = model.clone()
    key = f"diffusion_model.{block.comfy}.forward"
    inner = patched.get_model_object(key)  # the module's forward, or an earlier patch: patches chain

    def forward(x, *args, **kwargs):  # every argument ComfyUI gives is passed through unchanged
        y = inner(x, *args, **kwargs)
        try:
            return patch(x, y, call_context(transformer_options_of(args, kwargs)))
        except SAEError as exc:
            raise node_error(label, exc) from None

    patched.add_object_patch(key, forward)
    return patched
