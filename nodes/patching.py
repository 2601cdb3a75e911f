"""Patches on a ModelPatcher *clone*: the shared module and its weights are never modified, patches chain, and
ComfyUI removes them after each run so the base model is bit-identical afterwards.

U-Net blocks are object patches of the SpatialTransformer's bound ``forward`` (key
``diffusion_model.<block>.forward``; replacing the module breaks ComfyUI's isinstance dispatch and LoRA keys).
"""
from __future__ import annotations

import logging

import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer

from ..sae_core.blocks.context import CallContext, StepWindow
from ..sae_core.blocks.layout import Block, BlockLayout
from ..sae_core.blocks.patch import BlockPatch
from ..sae_core.blocks.unet import patched_output
from ..sae_core.errors import SAEError, SAEInputError
from ..sae_core.validate import check_number
from .base import node_error

log = logging.getLogger("sae_lab")


def model_block_layout(model) -> BlockLayout:
    """The transformer blocks of the loaded model, derived from ComfyUI's own diffusers key map."""
    config = getattr(model.model, "model_config", None)
    family = type(config).__name__ if config is not None else type(model.model).__name__
    unet_config = getattr(config, "unet_config", None) or {}
    diffusion_model = model.get_model_object("diffusion_model")
    channels = {name: module.in_channels for name, module in diffusion_model.named_modules()
                if isinstance(module, SpatialTransformer)}
    layout = BlockLayout.from_unet_key_map(family, comfy.utils.unet_to_diffusers(unet_config), channels)
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
    check_number("start_percent", start_percent, 0.0, 1.0)
    check_number("end_percent", end_percent, 0.0, 1.0)
    if start_percent > end_percent:
        raise SAEInputError(f"start_percent {start_percent} is after end_percent {end_percent}; start must be <= end")
    sampling = model.get_model_object("model_sampling")
    return StepWindow(sigma_start=float(sampling.percent_to_sigma(start_percent)),
                      sigma_end=float(sampling.percent_to_sigma(end_percent)))


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
    """A clone of ``model`` whose ``block`` runs ``patch`` after every call (errors are named by ``label``)."""
    patched = model.clone()
    key = f"diffusion_model.{block.comfy}.forward"
    inner = patched.get_model_object(key)  # the module's forward, or an earlier patch: patches chain

    def forward(x, *args, **kwargs):  # every argument ComfyUI gives is passed through unchanged
        y = inner(x, *args, **kwargs)
        try:
            ctx = CallContext.from_transformer_options(transformer_options_of(args, kwargs))
            return patched_output(patch, x, y, ctx)
        except SAEError as exc:
            raise node_error(label, exc) from None

    patched.add_object_patch(key, forward)
    return patched
