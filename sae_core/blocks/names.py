"""Names of transformer blocks in the notations users meet; the diffusers name is canonical.

U-Nets (SDXL, SD1.5):
- diffusers: ``down_blocks.2.attentions.1``, ``mid_block.attentions.0``, ``up_blocks.0.attentions.1``
  (SAE hookpoints add ``unet.``);
- the "Unpacking SDXL Turbo" short codes: ``down.2.1``, ``mid.0``, ``up.0.1``;
- ComfyUI module paths: ``input_blocks.8.1``, ``middle_block.1``, ``output_blocks.1.1`` (mapping these needs the
  model's layout, see :mod:`.layout`).

Diffusion transformers (Flux, SD3, Qwen-Image):
- diffusers: ``transformer_blocks.3`` (Flux double / SD3 joint / Qwen-Image blocks), ``single_transformer_blocks.5``
  (Flux single blocks); hookpoints add ``transformer.``;
- short codes: ``block.3`` (also ``double.3``, ``joint.3``) and ``single.5``;
- ComfyUI paths: ``double_blocks.3``, ``single_blocks.5`` (Flux), ``joint_blocks.3`` (SD3), ``transformer_blocks.3``
  (Qwen-Image).
"""
from __future__ import annotations

import re

from ..errors import SAEInputError

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.", "transformer.")
_UNET = re.compile(r"^(?:(down|up)_blocks\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.(0))$")
_UNET_SHORT = re.compile(r"^(?:(down|up)\.(\d+)\.(\d+)|mid(?:\.(0))?)$")
_UNET_COMFY = re.compile(r"^(?:(input|output)_blocks\.(\d+)\.(\d+)|middle_block\.(1))$")
_DIT = re.compile(r"^(single_)?transformer_blocks\.(\d+)$")
_DIT_SHORT = re.compile(r"^(block|double|joint|single)\.(\d+)$")
_DIT_COMFY = re.compile(r"^(double_blocks|joint_blocks|single_blocks)\.(\d+)$")  # one family each: unambiguous
UNET_KEY_MAP_ENTRY = re.compile(
    r"^((?:down|up)_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.0)\.proj_in\.weight$")


def strip_prefix(text: str) -> str:
    name = text.strip()
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def diffusers_name(text: str) -> str | None:
    """Canonical diffusers block name for a diffusers name or short code (U-Net or DiT), or a DiT's ComfyUI path;
    None for anything else (ComfyUI's U-Net paths need the model's layout)."""
    name = strip_prefix(text)
    if _UNET.match(name) or _DIT.match(name):
        return name
    m = _UNET_SHORT.match(name)
    if m:
        return f"{m.group(1)}_blocks.{m.group(2)}.attentions.{m.group(3)}" if m.group(1) else "mid_block.attentions.0"
    m = _DIT_SHORT.match(name) or _DIT_COMFY.match(name)
    if m:
        return f"{'single_' if m.group(1).startswith('single') else ''}transformer_blocks.{m.group(2)}"
    return None


def is_unet_name(diffusers: str) -> bool:
    return bool(_UNET.match(strip_prefix(diffusers)))


def unet_comfy_path(text: str) -> str | None:
    """A ComfyUI U-Net block path (``input_blocks.8.1``) if ``text`` is one, else None."""
    name = strip_prefix(text)
    return name if _UNET_COMFY.match(name) else None


def unet_order(comfy: str) -> tuple:
    """Input blocks, then the middle block, then output blocks, each by index (the order of the forward pass)."""
    m = _UNET_COMFY.match(comfy)
    section = {"input": 0, None: 1, "output": 2}[m.group(1)]
    return (section, int(m.group(2) or 0), int(m.group(3) or 0))


def short_code(diffusers: str) -> str:
    """``down_blocks.2.attentions.1`` -> ``down.2.1``; ``mid_block.attentions.0`` -> ``mid.0``;
    ``transformer_blocks.3`` -> ``block.3``; ``single_transformer_blocks.5`` -> ``single.5``."""
    name = strip_prefix(diffusers)
    m = _UNET.match(name)
    if m:
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m.group(1) else "mid.0"
    m = _DIT.match(name)
    if m:
        return f"{'single' if m.group(1) else 'block'}.{m.group(2)}"
    raise SAEInputError(f"{diffusers!r} is not a diffusers transformer-block name")


def hookpoint_of(diffusers: str) -> str:
    """The hookpoint string SAE checkpoints use: ``unet.`` (U-Nets) or ``transformer.`` (DiTs) + diffusers name."""
    name = strip_prefix(diffusers)
    return ("unet." if _UNET.match(name) else "transformer.") + name
