"""The registered model families. Each built-in one is a small module here declaring a
:class:`..family.UNetFamily` or :class:`..family.DiTFamily`; another is added with :func:`register` (from a module of
its own, a test or another pack), and every parser, layout and node then knows it."""
from __future__ import annotations

from ..family import DiTFamily, Family, UNetFamily
from ..notation import strip_prefix
from ..text_encoder import TextEncoder
from . import flux, qwen_image, sd3, text, unet

FAMILIES: list[Family] = [unet.SDXL, unet.SD15, flux.FAMILY, sd3.FAMILY, qwen_image.FAMILY, *text.ENCODERS]


def register(family: Family) -> Family:
    """Add ``family`` (first, so its names win over older ones'); one with the same name is replaced."""
    unregister(family)
    FAMILIES.insert(0, family)
    return family


def unregister(family: Family) -> None:
    FAMILIES[:] = [f for f in FAMILIES if f.name != family.name]


def dit_families() -> list[DiTFamily]:
    return [f for f in FAMILIES if isinstance(f, DiTFamily)]


def unet_families() -> list[UNetFamily]:
    return [f for f in FAMILIES if isinstance(f, UNetFamily)]


def text_encoders() -> tuple[TextEncoder, ...]:
    return tuple(f for f in FAMILIES if isinstance(f, TextEncoder))


def _most_specific(candidates: list[tuple[int | None, Family]]) -> Family | None:
    found = [(depth, i, f) for i, (depth, f) in enumerate(candidates) if depth is not None]
    return min(found, key=lambda t: t[:2])[2] if found else None


def family_of(diffusion_model) -> DiTFamily | None:
    """The DiT family of a ComfyUI diffusion model (its class or the nearest ancestor named by a family)."""
    return _most_specific([(f.match_depth(diffusion_model) if f.matches(diffusion_model) else None, f)
                           for f in dit_families()])


def unet_family_of(model_config) -> UNetFamily | None:
    """The U-Net family of a ComfyUI model config (``comfy.supported_models`` class), None for an unknown one."""
    return _most_specific([(f.match_depth(model_config), f) for f in unet_families()])


def text_encoder_of(hookpoint: str | None) -> TextEncoder | None:
    """The text encoder whose layer ``hookpoint`` names, None for any other name."""
    name = strip_prefix(hookpoint or "")
    return next((e for e in text_encoders() if e.notation.diffusers(name)), None)


def infer_model_family(hookpoint: str | None, d_in: int) -> str | None:
    """The text encoder of a text layer (clip_l, clip_g, t5); a U-Net family's name when exactly one released
    layout has this block at this width; else None."""
    if not hookpoint:
        return None
    encoder = text_encoder_of(hookpoint)
    if encoder is not None:
        return encoder.name
    fits = []
    for family in unet_families():
        name = family.notation.diffusers(strip_prefix(hookpoint))
        if name and any(b.diffusers == name and b.channels == d_in for b in family.static_layout):
            fits.append(family.name)
    return fits[0] if len(fits) == 1 else None
