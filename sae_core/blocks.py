"""Names of U-Net transformer blocks in the three notations users meet.

- diffusers: ``down_blocks.2.attentions.1``, ``mid_block.attentions.0``, ``up_blocks.0.attentions.1``
  (SAE hookpoints add a ``unet.`` prefix);
- the "Unpacking SDXL Turbo" short codes: ``down.2.1``, ``mid.0``, ``up.0.1``;
- ComfyUI module paths: ``input_blocks.8.1``, ``middle_block.1``, ``output_blocks.1.1``.

The diffusers name is canonical. Mapping it to a ComfyUI path depends on the model layout, so a
:class:`BlockLayout` is built from (diffusers, comfy path, channels) triples; the ComfyUI adapter
derives them from the loaded model, and the static SDXL/SD1.5 tables below serve offline tools and tests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SAEInputError

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.")
_DIFFUSERS = re.compile(r"^(?:(down|up)_blocks\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.(0))$")
_SHORT = re.compile(r"^(?:(down|up)\.(\d+)\.(\d+)|mid(?:\.(0))?)$")
_COMFY = re.compile(r"^(?:(input|output)_blocks\.(\d+)\.(\d+)|middle_block\.(1))$")
_KEY_MAP_ENTRY = re.compile(r"^((?:down|up)_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.0)\.proj_in\.weight$")


def _strip(text: str) -> str:
    name = text.strip()
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def diffusers_name(text: str) -> str | None:
    """Canonical diffusers block name for a diffusers name or short code; None for anything else."""
    name = _strip(text)
    m = _DIFFUSERS.match(name)
    if m:
        return name
    m = _SHORT.match(name)
    if m:
        if m.group(1):
            return f"{m.group(1)}_blocks.{m.group(2)}.attentions.{m.group(3)}"
        return "mid_block.attentions.0"
    return None


def comfy_path(text: str) -> str | None:
    """A ComfyUI block path (``input_blocks.8.1``) if ``text`` is one, else None."""
    name = _strip(text)
    return name if _COMFY.match(name) else None


def short_code(diffusers: str) -> str:
    """``down_blocks.2.attentions.1`` -> ``down.2.1``; ``mid_block.attentions.0`` -> ``mid.0``."""
    m = _DIFFUSERS.match(_strip(diffusers))
    if not m:
        raise SAEInputError(f"{diffusers!r} is not a diffusers transformer-block name")
    if m.group(1):
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return "mid.0"


def hookpoint_of(diffusers: str) -> str:
    """The hookpoint string SAE checkpoints use: ``unet.`` + diffusers name."""
    return "unet." + _strip(diffusers)


@dataclass(frozen=True)
class Block:
    diffusers: str
    comfy: str
    channels: int

    @property
    def short(self) -> str:
        return short_code(self.diffusers)

    def label(self) -> str:
        return f"{self.short} ({self.diffusers} = {self.comfy}, {self.channels} ch)"


class BlockLayout:
    """The transformer blocks of one U-Net, resolvable from any of the three notations."""

    def __init__(self, family: str, blocks: list[Block]):
        self.family = family
        self.blocks = list(blocks)
        self._by_diffusers = {b.diffusers: b for b in self.blocks}
        self._by_comfy = {b.comfy: b for b in self.blocks}

    def resolve(self, text: str) -> Block:
        """The block named by ``text`` in any notation; a clear error listing valid names otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise SAEInputError(f"no block given; valid blocks for this {self.family} model: {self.valid_names()}")
        name = diffusers_name(text)
        block = self._by_diffusers.get(name) if name else self._by_comfy.get(comfy_path(text) or "")
        if block is None:
            raise SAEInputError(
                f"block {text!r} does not exist in this {self.family} model; valid blocks: {self.valid_names()}"
            )
        return block

    def valid_names(self) -> str:
        return ", ".join(f"{b.short} / {b.diffusers} / {b.comfy}" for b in self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_key_map(cls, family: str, key_map: dict[str, str], channels: dict[str, int]) -> "BlockLayout":
        """Build from a diffusers->ldm weight-key map (ComfyUI's ``unet_to_diffusers``).

        ``channels`` maps ComfyUI block paths to their width.
        """
        blocks = []
        for diffusers_key, ldm_key in key_map.items():
            m = _KEY_MAP_ENTRY.match(diffusers_key)
            if not m:
                continue
            comfy = ldm_key[: -len(".proj_in.weight")]
            if comfy in channels:
                blocks.append(Block(m.group(1), comfy, channels[comfy]))
        blocks.sort(key=_block_order)
        return cls(family, blocks)


def _block_order(block: Block) -> tuple:
    m = _COMFY.match(block.comfy)
    section = {"input": 0, None: 1, "output": 2}[m.group(1)]
    return (section, int(m.group(2) or 0), int(m.group(3) or 0))


def _table(family: str, rows: list[tuple[str, str, int]]) -> BlockLayout:
    return BlockLayout(family, [Block(d, c, ch) for d, c, ch in rows])


SDXL_LAYOUT = _table("SDXL", [
    ("down_blocks.1.attentions.0", "input_blocks.4.1", 640),
    ("down_blocks.1.attentions.1", "input_blocks.5.1", 640),
    ("down_blocks.2.attentions.0", "input_blocks.7.1", 1280),
    ("down_blocks.2.attentions.1", "input_blocks.8.1", 1280),
    ("mid_block.attentions.0", "middle_block.1", 1280),
    ("up_blocks.0.attentions.0", "output_blocks.0.1", 1280),
    ("up_blocks.0.attentions.1", "output_blocks.1.1", 1280),
    ("up_blocks.0.attentions.2", "output_blocks.2.1", 1280),
    ("up_blocks.1.attentions.0", "output_blocks.3.1", 640),
    ("up_blocks.1.attentions.1", "output_blocks.4.1", 640),
    ("up_blocks.1.attentions.2", "output_blocks.5.1", 640),
])

SD15_LAYOUT = _table("SD1.5", [
    ("down_blocks.0.attentions.0", "input_blocks.1.1", 320),
    ("down_blocks.0.attentions.1", "input_blocks.2.1", 320),
    ("down_blocks.1.attentions.0", "input_blocks.4.1", 640),
    ("down_blocks.1.attentions.1", "input_blocks.5.1", 640),
    ("down_blocks.2.attentions.0", "input_blocks.7.1", 1280),
    ("down_blocks.2.attentions.1", "input_blocks.8.1", 1280),
    ("mid_block.attentions.0", "middle_block.1", 1280),
    ("up_blocks.1.attentions.0", "output_blocks.3.1", 1280),
    ("up_blocks.1.attentions.1", "output_blocks.4.1", 1280),
    ("up_blocks.1.attentions.2", "output_blocks.5.1", 1280),
    ("up_blocks.2.attentions.0", "output_blocks.6.1", 640),
    ("up_blocks.2.attentions.1", "output_blocks.7.1", 640),
    ("up_blocks.2.attentions.2", "output_blocks.8.1", 640),
    ("up_blocks.3.attentions.0", "output_blocks.9.1", 320),
    ("up_blocks.3.attentions.1", "output_blocks.10.1", 320),
    ("up_blocks.3.attentions.2", "output_blocks.11.1", 320),
])

KNOWN_LAYOUTS = {"sdxl": SDXL_LAYOUT, "sd15": SD15_LAYOUT}


def infer_model_family(hookpoint: str | None, d_in: int) -> str | None:
    """``"sdxl"`` or ``"sd15"`` when exactly one known layout has this block at this width, else None."""
    if not hookpoint:
        return None
    name = diffusers_name(hookpoint)
    if name is None:
        return None
    fits = [fam for fam, layout in KNOWN_LAYOUTS.items()
            if any(b.diffusers == name and b.channels == d_in for b in layout)]
    return fits[0] if len(fits) == 1 else None
