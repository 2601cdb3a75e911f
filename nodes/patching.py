"""Patches on a ModelPatcher *clone*: the shared module and its weights are never modified, patches chain, and
ComfyUI removes them after each run so the base model is bit-identical afterwards.

- U-Net blocks are object patches of the SpatialTransformer's bound ``forward`` (key
  ``diffusion_model.<block>.forward``; replacing the module breaks ComfyUI's isinstance dispatch and LoRA keys).
- Diffusion-transformer blocks use ComfyUI's block replacement (``set_model_patch_replace(fn, "dit", kind, i)``),
  calling the replacement another pack installed there, if any, else the original block.
- Every patched clone carries one APPLY_MODEL wrapper that reads the facts of each model call (passes, sigma,
  step, latent size) once, for all the patched blocks of that call.
"""
from __future__ import annotations

import logging

import comfy.patcher_extension
import comfy.utils
import torch
from comfy.ldm.modules.attention import SpatialTransformer

from ..sae_core.blocks.context import CallContext, StepWindow
from ..sae_core.blocks.dit import patched_block
from ..sae_core.blocks.families import dit_families, family_of, unet_families, unet_family_of
from ..sae_core.blocks.families.unet import other_unet
from ..sae_core.blocks.family import Family, UNetFamily
from ..sae_core.blocks.layout import SPATIAL_TRANSFORMER, Block, BlockLayout
from ..sae_core.blocks.patch import BlockPatch
from ..sae_core.blocks.unet import patched_output
from ..sae_core.errors import SAEError, SAEInputError
from ..sae_core.validate import check_number
from .base import node_error

log = logging.getLogger("sae_lab")
CALL_KEY = "sae_lab_call"  # where the model-call wrapper leaves the CallContext in transformer_options
PATCHES_KEY = "sae_lab_patches"  # the SAE Lab patches of a model, prepared before each model call


def supported() -> str:
    """The registered families, as an error message lists them."""
    return (" and ".join(f.title for f in unet_families()) + " U-Nets (and others with SpatialTransformer blocks) "
            "and " + ", ".join(f.title for f in dit_families()))


def _label(model) -> str:
    config = getattr(model.model, "model_config", None)
    return type(config).__name__ if config is not None else type(model.model).__name__


def family_of_model(model) -> Family:
    """The registered family of the loaded model (its diffusion model's class for DiTs, its model config's for
    U-Nets), or a U-Net family named after the model's class."""
    return family_of(model.get_model_object("diffusion_model")) or \
        unet_family_of(getattr(model.model, "model_config", None)) or other_unet(_label(model))


def model_family(model) -> str:
    """What SAEs trained on this model record as their model_family (sdxl, sd15, flux, sd3, qwen_image...)."""
    return family_of_model(model).name


def model_block_layout(model) -> BlockLayout:
    """The transformer blocks of the loaded model: a DiT family's block lists, or a U-Net's blocks derived from
    ComfyUI's own diffusers key map."""
    label, family = _label(model), family_of_model(model)
    diffusion_model = model.get_model_object("diffusion_model")
    if not isinstance(family, UNetFamily):
        return family.layout(diffusion_model, label)
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    channels = {name: module.in_channels for name, module in diffusion_model.named_modules()
                if isinstance(module, SpatialTransformer)}
    layout = family.layout_from_key_map(comfy.utils.unet_to_diffusers(unet_config), channels, label) \
        if channels else None
    if layout is None or not len(layout):
        raise SAEInputError(f"this {label} model has no transformer blocks SAE Lab can patch; SAE Lab works with "
                            f"{supported()}")
    return layout


def resolve_block(model, sae, block_text: str) -> Block:
    """The block named by the user, or the SAE's own hookpoint when left empty; widths must match."""
    layout = model_block_layout(model)
    return _fitting(layout, sae, layout.resolve(_block_text(layout, sae, block_text)))


def resolve_blocks(model, sae, blocks_text: str) -> list[Block]:
    """The blocks of a list or range (``double.18, single.0-37``), or the SAE's own block when left empty; every
    block must have the SAE's width."""
    layout = model_block_layout(model)
    return [_fitting(layout, sae, b) for b in layout.resolve_many(_block_text(layout, sae, blocks_text))]


def _block_text(layout: BlockLayout, sae, block_text: str) -> str:
    if getattr(sae, "stream", "image") == "text":  # patches read and edit the image tokens only
        raise SAEInputError(f"this SAE encodes the text stream of {sae.hookpoint or 'its block'} (stream 'text'); "
                            f"SAE Lab patches the image tokens only, so use an SAE of the image stream")
    text = (block_text or "").strip() or (sae.hookpoint or "")
    if not text:
        raise SAEInputError(f"this SAE does not say which block it was trained on; type a block, one of: "
                            f"{layout.valid_names()}")
    return text


def _fitting(layout: BlockLayout, sae, block: Block) -> Block:
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


def _model_call(executor, *args, **kwargs):
    """APPLY_MODEL wrapper: the facts of this model call, computed once for all its patched blocks, and each patch
    prepared (caches and casts built on the host), outside any region torch.compile traces."""
    options = transformer_options_of(args, kwargs)
    latent = args[0] if args else kwargs.get("x")
    ctx = CallContext.from_transformer_options(options, latent, kwargs.get("ref_latents"))
    options[CALL_KEY] = ctx
    if isinstance(latent, torch.Tensor):
        for patch in options.get(PATCHES_KEY, ()):
            patch.prepare(ctx, latent.device)
    return executor(*args, **kwargs)


def context_of(options: dict) -> CallContext:
    ctx = options.get(CALL_KEY)
    return ctx if isinstance(ctx, CallContext) else CallContext.from_transformer_options(options)


def _with_call_context(patched) -> None:
    apply_model = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    if not patched.get_wrappers(apply_model, CALL_KEY):
        patched.add_wrapper_with_key(apply_model, CALL_KEY, _model_call)


class SharedPatches(list):
    """The SAE Lab patches of a model, in its transformer_options. ``ModelPatcher.clone`` deep-copies model_options
    on some ComfyUI versions (0.3.x): a copy of a patch would be prepared while its block runs the original, and
    would copy its SAE's weights. A copy of this list holds the same patches."""

    def __deepcopy__(self, memo):
        return SharedPatches(self)


def install_block_patch(model, block: Block | list[Block], patch: BlockPatch, label: str):
    """A clone of ``model`` whose ``block`` (or each of a list of blocks) runs ``patch`` after every call (errors are
    named by ``label``); the patch is prepared once per model call however many blocks run it."""
    patched = model.clone()
    _with_call_context(patched)
    options = patched.model_options.setdefault("transformer_options", {})
    options[PATCHES_KEY] = SharedPatches([*options.get(PATCHES_KEY, []), patch])
    for one in block if isinstance(block, list) else [block]:
        if one.kind == SPATIAL_TRANSFORMER:
            _patch_spatial_transformer(patched, one, patch, label)
        else:
            _patch_dit_block(patched, one, patch, label)
    return patched


def _patch_spatial_transformer(patched, block: Block, patch: BlockPatch, label: str) -> None:
    key = f"diffusion_model.{block.comfy}.forward"
    inner = patched.get_model_object(key)  # the module's forward, or an earlier patch: patches chain

    def forward(x, *args, **kwargs):  # every argument ComfyUI gives is passed through unchanged
        y = inner(x, *args, **kwargs)
        try:
            return patched_output(patch, x, y, context_of(transformer_options_of(args, kwargs)))
        except SAEError as exc:
            raise node_error(label, exc) from None

    patched.add_object_patch(key, forward)


def _patch_dit_block(patched, block: Block, patch: BlockPatch, label: str) -> None:
    diffusion_model = patched.get_model_object("diffusion_model")
    family = family_of(diffusion_model)
    tokens, patch_size = family.tokens(block), family.patch_size(diffusion_model)
    replacements = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    previous = replacements.get((block.kind, block.index))  # another pack's (or an earlier SAE Lab) replacement

    def replacement(args: dict, extra: dict) -> dict:
        def run_block(block_args: dict) -> dict:
            return previous(block_args, extra) if previous is not None else extra["original_block"](block_args)

        try:  # errors of the block itself (and of chained patches, named already) pass through as they are
            return patched_block(patch, tokens, args, run_block, context_of(args.get("transformer_options") or {}),
                                 patch_size)
        except SAEError as exc:
            raise node_error(label, exc) from None

    patched.set_model_patch_replace(replacement, "dit", block.kind, block.index)
