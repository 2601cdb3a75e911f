"""The transformer blocks of one model: each block's names in every notation, its width and how it is patched.

A layout is made by the model's family (:mod:`.family`) from the loaded model; the U-Net families also keep static
SDXL/SD1.5 tables for offline tools and tests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SAEInputError
from .notation import Notation, strip_prefix

_RANGE = re.compile(r"^(?P<head>.*\.)(?P<first>\d+)-(?P<last>\d+)$")  # single.0-37, up.0.0-2
SPATIAL_TRANSFORMER = "spatial_transformer"  # a U-Net block: its module's forward is patched


@dataclass(frozen=True)
class Block:
    diffusers: str   # canonical name: down_blocks.2.attentions.1, transformer_blocks.3, ...
    comfy: str       # ComfyUI module path inside diffusion_model: input_blocks.8.1, double_blocks.3, ...
    channels: int
    short: str       # down.2.1, block.3, single.5: as the family's notation prints it
    hookpoint: str   # as SAE checkpoints name it: unet.down_blocks.2.attentions.1, transformer.transformer_blocks.3
    kind: str = SPATIAL_TRANSFORMER  # how the block is patched (see nodes/patching.py)
    index: int = -1  # position among the blocks of its kind (DiT blocks are patched by index)

    @classmethod
    def named(cls, notation: Notation, diffusers: str, comfy: str, channels: int, **how) -> Block:
        """A block whose short code and hookpoint come from its family's notation."""
        return cls(diffusers, comfy, channels, notation.short(diffusers) or diffusers, notation.hookpoint(diffusers),
                   **how)

    def label(self) -> str:
        return f"{self.short} ({self.diffusers} = {self.comfy}, {self.channels} ch)"


class BlockLayout:
    """The transformer blocks of one model, resolvable from any notation of its family."""

    def __init__(self, family: str, blocks: list[Block], notation: Notation):
        self.family = family
        self.blocks = list(blocks)
        self.notation = notation
        self._by_diffusers = {b.diffusers: b for b in self.blocks}
        self._by_comfy = {b.comfy: b for b in self.blocks}

    def resolve(self, text: str) -> Block:
        """The block named by ``text`` in any notation; a clear error listing valid names otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise SAEInputError(f"no block given; valid blocks for this {self.family} model: {self.valid_names()}")
        name = strip_prefix(text)
        diffusers = self.notation.diffusers(name)
        block = self._by_diffusers.get(diffusers) if diffusers else self._by_comfy.get(name)
        if block is None:
            shown = text if len(text) <= 60 else text[:59] + "…"
            raise SAEInputError(
                f"block {shown!r} does not exist in this {self.family} model; valid blocks: {self.valid_names()}")
        return block

    def resolve_many(self, text: str) -> list[Block]:
        """Blocks named by a list such as ``double.18, single.0-37`` (ranges of indices in any notation,
        ``up.0.0-2`` on U-Nets), each once, in the order given; a clear error naming the entry otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise SAEInputError(f"no block given; valid blocks for this {self.family} model: {self.valid_names()}")
        blocks: list[Block] = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            m = _RANGE.match(entry)
            if m is None:
                names = [entry]
            else:
                first, last = int(m["first"]), int(m["last"])
                if first > last or last - first >= len(self.blocks):
                    raise SAEInputError(f"block range {entry[:60]!r} is not a range of this {self.family} model's "
                                        f"blocks; write it first-last with first <= last, e.g. single.0-37")
                names = [f"{m['head']}{i}" for i in range(first, last + 1)]
            blocks += [b for b in map(self.resolve, names) if b not in blocks]
        if not blocks:
            raise SAEInputError(f"no block given; valid blocks for this {self.family} model: {self.valid_names()}")
        return blocks

    def valid_names(self) -> str:
        return ", ".join(f"{b.short} / {b.diffusers} / {b.comfy}" for b in self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)
