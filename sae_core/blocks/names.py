"""Block names without a model at hand (a checkpoint's hookpoint, a profile's block, a typed name): parsed by the
notations of the registered families (:mod:`.families`), the first that knows a name wins. With a model loaded, its
layout resolves names in its own family's notation (:meth:`.layout.BlockLayout.resolve`)."""
from __future__ import annotations

from ..errors import SAEInputError
from .families import FAMILIES, infer_model_family
from .notation import UNET, strip_prefix

__all__ = ["diffusers_name", "hookpoint_of", "infer_model_family", "is_unet_name", "short_code", "strip_prefix",
           "unet_comfy_path"]


def diffusers_name(text: str) -> str | None:
    """Canonical diffusers block name for a diffusers name, short code or (for DiTs) ComfyUI path in the notation
    of any registered family; None for anything else (ComfyUI's U-Net paths need the model's layout)."""
    name = strip_prefix(text)
    return next((d for d in (f.notation.diffusers(name) for f in FAMILIES) if d), None)


def _notation_of(text: str):
    name = diffusers_name(text) or strip_prefix(text)
    for family in FAMILIES:
        if family.notation.short(name) is not None:
            return family.notation, name
    raise SAEInputError(f"{text!r} is not a transformer-block name")


def short_code(block: str) -> str:
    """``down_blocks.2.attentions.1`` -> ``down.2.1``; ``transformer_blocks.3`` -> ``block.3``; any notation."""
    notation, name = _notation_of(block)
    return notation.short(name)


def hookpoint_of(block: str) -> str:
    """The hookpoint string SAE checkpoints use: the family's prefix (``unet.``, ``transformer.``) + diffusers name."""
    notation, name = _notation_of(block)
    return notation.hookpoint(name)


def unet_comfy_path(text: str) -> str | None:
    """A ComfyUI U-Net block path (``input_blocks.8.1``) if ``text`` is one, else None."""
    return UNET.comfy_path(text)


def is_unet_name(text: str) -> bool:
    """Whether ``text`` is a U-Net block's diffusers name (``unet.`` prefix or not)."""
    return UNET.short(strip_prefix(text)) is not None
