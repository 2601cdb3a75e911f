"""The diffusion-transformer families SAE Lab patches. Each module describes one family as a
:class:`..dit.DiTFamily` (its ComfyUI class, its block lists and their diffusers names, its width); adding a
family is one small module here plus its name in ``FAMILIES``."""
from __future__ import annotations

from ..dit import DiTFamily
from . import flux, qwen_image, sd3

FAMILIES: tuple[DiTFamily, ...] = (flux.FAMILY, sd3.FAMILY, qwen_image.FAMILY)


def family_of(diffusion_model) -> DiTFamily | None:
    return next((f for f in FAMILIES if f.matches(diffusion_model)), None)
