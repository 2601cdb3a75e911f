"""What SAE Lab knows about one family of models, as data: its name, the ComfyUI classes it is recognised by, its
block notation and how its blocks are laid out and patched. Each family is declared in one small module of
``families/`` (or by a test, or another pack) and registered there; nothing else names a family.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from .dit import BlockList, TokenLayout
from .layout import Block, BlockLayout
from .notation import UNET, DiTNotation, Notation, UNetNotation


class Family:
    """The common part of every family: ``name`` (the ``model_family`` SAEs trained on it record), ``title`` (as
    users call it), ``classes`` (ComfyUI model-config or diffusion-model class names, matched along the class
    hierarchy: no ComfyUI import here) and its block ``notation``."""

    name: str
    title: str
    classes: tuple[str, ...]
    notation: Notation

    def match_depth(self, *objects) -> int | None:
        """How close one of this family's classes is to the objects' own classes (0: the class itself), None when
        none is an ancestor: the most specific family wins, so a subclass can be a family of its own."""
        depths = [depth for obj in objects if obj is not None
                  for depth, cls in enumerate(type(obj).__mro__) if cls.__name__ in self.classes]
        return min(depths) if depths else None


@dataclass(frozen=True)
class UNetFamily(Family):
    """A U-Net whose transformer blocks are ComfyUI ``SpatialTransformer`` modules, patched through their forward.
    Its layout comes from ComfyUI's diffusers key map of the loaded model; ``table`` (diffusers name, ComfyUI path,
    width) is the released models' layout, for tools without a model at hand."""

    name: str
    title: str
    classes: tuple[str, ...]
    table: tuple[tuple[str, str, int], ...] = ()
    notation: UNetNotation = UNET

    def layout_from_key_map(self, key_map: dict[str, str], channels: dict[str, int], label: str) -> BlockLayout:
        """The model's blocks from its diffusers->ldm weight-key map (ComfyUI's ``unet_to_diffusers``);
        ``channels`` maps ComfyUI block paths to their width."""
        blocks = []
        for diffusers_key, ldm_key in key_map.items():
            m = self.notation.key_map_entry(diffusers_key)
            if m is None:
                continue
            comfy = ldm_key[: -len(".proj_in.weight")]
            if comfy in channels:
                blocks.append(Block.named(self.notation, m, comfy, channels[comfy]))
        blocks.sort(key=lambda b: self.notation.order(b.comfy))
        return BlockLayout(label, blocks, self.notation)

    @cached_property
    def static_layout(self) -> BlockLayout:
        return BlockLayout(self.title, [Block.named(self.notation, d, c, ch) for d, c, ch in self.table],
                           self.notation)


@dataclass(frozen=True)
class DiTFamily(Family):
    """A diffusion transformer that ComfyUI calls block by block through ``patches_replace["dit"]``: its block lists
    (each with its replacement kind, ModuleList, names, and token layout with the view its patches see) and its
    width."""

    name: str
    title: str
    classes: tuple[str, ...]
    blocks: tuple[BlockList, ...]
    width: Callable[[object], int]  # hidden size, from the diffusion model

    @cached_property
    def notation(self) -> DiTNotation:
        return DiTNotation(self.blocks)

    def matches(self, diffusion_model) -> bool:
        return self.match_depth(diffusion_model) is not None and \
            all(hasattr(diffusion_model, b.attribute) for b in self.blocks)

    def layout(self, diffusion_model, label: str) -> BlockLayout:
        width = int(self.width(diffusion_model))
        blocks = [Block.named(self.notation, f"{b.diffusers}.{i}", f"{b.attribute}.{i}", width, kind=b.kind, index=i)
                  for b in self.blocks for i in range(len(getattr(diffusion_model, b.attribute)))]
        return BlockLayout(label, blocks, self.notation)

    def tokens(self, block: Block) -> TokenLayout:
        """Where calls of ``block`` hold the generated image's tokens."""
        return next(b.tokens for b in self.blocks if block.comfy == f"{b.attribute}.{block.index}")

    def patch_size(self, diffusion_model) -> int:
        size = getattr(diffusion_model, "patch_size", 2)
        return int(size[-1] if isinstance(size, (tuple, list)) else size)

