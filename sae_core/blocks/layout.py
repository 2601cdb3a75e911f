"""The transformer blocks of one model: each block's names in every notation, its width and how it is patched.

Layouts are built from the loaded model by the ComfyUI adapter (from ComfyUI's own diffusers key maps and the
model's modules); the static SDXL/SD1.5 tables below serve offline tools and tests.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SAEInputError
from .names import UNET_KEY_MAP_ENTRY, diffusers_name, hookpoint_of, short_code, strip_prefix, unet_order

SPATIAL_TRANSFORMER = "spatial_transformer"  # a U-Net block: its module's forward is patched


@dataclass(frozen=True)
class Block:
    diffusers: str   # canonical name: down_blocks.2.attentions.1, transformer_blocks.3, ...
    comfy: str       # ComfyUI module path inside diffusion_model: input_blocks.8.1, double_blocks.3, ...
    channels: int
    kind: str = SPATIAL_TRANSFORMER  # how the block is patched (see nodes/patching.py)
    index: int = -1  # position among the blocks of its kind (DiT blocks are patched by index)

    @property
    def short(self) -> str:
        return short_code(self.diffusers)

    @property
    def hookpoint(self) -> str:
        return hookpoint_of(self.diffusers)

    def label(self) -> str:
        return f"{self.short} ({self.diffusers} = {self.comfy}, {self.channels} ch)"


class BlockLayout:
    """The transformer blocks of one model, resolvable from any notation."""

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
        block = self._by_diffusers.get(name) if name else self._by_comfy.get(strip_prefix(text))
        if block is None:
            shown = text if len(text) <= 60 else text[:59] + "…"
            raise SAEInputError(
                f"block {shown!r} does not exist in this {self.family} model; valid blocks: {self.valid_names()}")
        return block

    def valid_names(self) -> str:
        return ", ".join(f"{b.short} / {b.diffusers} / {b.comfy}" for b in self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_unet_key_map(cls, family: str, key_map: dict[str, str], channels: dict[str, int]) -> BlockLayout:
        """A U-Net's blocks from its diffusers->ldm weight-key map (ComfyUI's ``unet_to_diffusers``).

        ``channels`` maps ComfyUI block paths to their width.
        """
        blocks = []
        for diffusers_key, ldm_key in key_map.items():
            m = UNET_KEY_MAP_ENTRY.match(diffusers_key)
            if not m:
                continue
            comfy = ldm_key[: -len(".proj_in.weight")]
            if comfy in channels:
                blocks.append(Block(m.group(1), comfy, channels[comfy]))
        blocks.sort(key=lambda b: unet_order(b.comfy))
        return cls(family, blocks)


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
