"""How one family of models names its transformer blocks: the diffusers name (canonical), short codes and ComfyUI
module paths. A family declares its notation; the parsers of :mod:`.names` and every layout are derived from the
registered families' notations, so a new family needs no edit here.

U-Nets (SDXL, SD1.5): diffusers ``down_blocks.2.attentions.1``, ``mid_block.attentions.0``,
``up_blocks.0.attentions.1``; the "Unpacking SDXL Turbo" short codes ``down.2.1``, ``mid.0``, ``up.0.1``; ComfyUI
paths ``input_blocks.8.1``, ``middle_block.1``, ``output_blocks.1.1`` (mapping these needs the model's layout).

Diffusion transformers: one numbered list per kind of block, e.g. Flux's ``transformer_blocks.i`` (short
``block.i`` / ``double.i``, ComfyUI ``double_blocks.i``) and ``single_transformer_blocks.i`` (``single.i``,
``single_blocks.i``).
"""
from __future__ import annotations

import re
from typing import Protocol

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.", "transformer.")


def strip_prefix(text: str) -> str:
    """A block name without the module prefixes checkpoints and ComfyUI put before it."""
    name = text.strip()
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class Notation:
    """The names of one family's blocks. ``diffusers`` and ``short`` return None for a name that is not theirs."""

    hookpoint_prefix = ""  # what SAE checkpoints put before the diffusers name (``unet.``, ``transformer.``)

    def diffusers(self, name: str) -> str | None:
        """The canonical diffusers name for a (prefix-stripped) name in any notation this family knows without a
        model at hand, else None."""
        raise NotImplementedError

    def short(self, diffusers: str) -> str | None:
        """The short code of a canonical diffusers name of this family, else None."""
        raise NotImplementedError

    def hookpoint(self, diffusers: str) -> str:
        return self.hookpoint_prefix + diffusers


_UNET = re.compile(r"^(?:(down|up)_blocks\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.(0))$")
_UNET_SHORT = re.compile(r"^(?:(down|up)\.(\d+)\.(\d+)|mid(?:\.(0))?)$")
_UNET_COMFY = re.compile(r"^(?:(input|output)_blocks\.(\d+)\.(\d+)|middle_block\.(1))$")
UNET_KEY_MAP_ENTRY = re.compile(
    r"^((?:down|up)_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.0)\.proj_in\.weight$")


class UNetNotation(Notation):
    """SDXL / SD1.5 U-Net transformer blocks (``SpatialTransformer``s)."""

    hookpoint_prefix = "unet."

    def diffusers(self, name: str) -> str | None:
        if _UNET.match(name):
            return name
        m = _UNET_SHORT.match(name)
        if m:
            return f"{m.group(1)}_blocks.{m.group(2)}.attentions.{m.group(3)}" if m.group(1) else \
                "mid_block.attentions.0"
        return None

    def short(self, diffusers: str) -> str | None:
        m = _UNET.match(diffusers)
        if not m:
            return None
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m.group(1) else "mid.0"

    @staticmethod
    def key_map_entry(diffusers_key: str) -> str | None:
        """The block of a diffusers weight key that names a transformer block's ``proj_in`` (one per block)."""
        m = UNET_KEY_MAP_ENTRY.match(diffusers_key)
        return m.group(1) if m else None

    @staticmethod
    def comfy_path(text: str) -> str | None:
        """A ComfyUI U-Net block path (``input_blocks.8.1``) if ``text`` is one, else None."""
        name = strip_prefix(text)
        return name if _UNET_COMFY.match(name) else None

    @staticmethod
    def order(comfy: str) -> tuple:
        """Input blocks, then the middle block, then output blocks, each by index (the forward pass's order)."""
        m = _UNET_COMFY.match(comfy)
        section = {"input": 0, None: 1, "output": 2}[m.group(1)]
        return (section, int(m.group(2) or 0), int(m.group(3) or 0))


UNET = UNetNotation()


class NumberedBlocks(Protocol):
    """One numbered list of a diffusion transformer's blocks and how each notation names block i:
    ``{diffusers}.i`` (canonical), ``{short[0]}.i`` (printed; the other short codes are accepted too) and
    ``{attribute}.i``, the ModuleList on ComfyUI's diffusion model (:class:`.dit.BlockList` is one)."""

    diffusers: str
    short: tuple[str, ...]
    attribute: str


def numbered(prefixes: tuple[str, ...]) -> re.Pattern:
    """``<one of prefixes>.<i>``, capturing i: how every numbered block or layer list is named."""
    return re.compile(r"^(?:" + "|".join(re.escape(p) for p in prefixes) + r")\.(\d+)$")


class DiTNotation(Notation):
    """The numbered block lists of a diffusion transformer."""

    hookpoint_prefix = "transformer."

    def __init__(self, lists: tuple[NumberedBlocks, ...]):
        self.lists = lists
        self._any = [(b, numbered((b.diffusers, *b.short, b.attribute))) for b in lists]
        self._canonical = [(b, numbered((b.diffusers,))) for b in lists]

    def diffusers(self, name: str) -> str | None:
        for blocks, pattern in self._any:
            m = pattern.match(name)
            if m:
                return f"{blocks.diffusers}.{m.group(1)}"
        return None

    def short(self, diffusers: str) -> str | None:
        for blocks, pattern in self._canonical:
            m = pattern.match(diffusers)
            if m:
                return f"{blocks.short[0]}.{m.group(1)}"
        return None
