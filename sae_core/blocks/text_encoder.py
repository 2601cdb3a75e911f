"""Text-encoder layers as a block kind: the CLIP-L / CLIP-G layers and T5 blocks that condition diffusion models.

Each encoder is declared as data (:class:`TextEncoder`, registered with the other families) with its notation:
diffusers names as pipelines call them (``text_encoder.text_model.encoder.layers.9`` for CLIP-L,
``text_encoder_2.text_model.encoder.layers.N`` for SDXL's / SD3's CLIP-G, ``text_encoder_2.encoder.block.22`` for
Flux's T5, ``text_encoder_3.encoder.block.N`` for SD3's), the bare module names of a lone encoder
(``text_model.encoder.layers.8``, as Interpret-then-Deactivate names it; ``encoder.block.N``), short codes
(``clip_l.9``, ``clip_g.30``, ``t5.22``) and ComfyUI paths inside a CLIP's ``cond_stage_model``
(``clip_l.transformer.text_model.encoder.layers.9``, ``t5xxl.transformer.encoder.block.22``).

A patch on a text layer sees a :class:`TextLayerView`: the layer's output over the prompt's tokens as
(N, 1, T, C) (grid (1, T): one row of token positions), so the image-block edits apply unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from torch import Tensor

from ..errors import SAEInputError
from .family import Family
from .layout import Block, BlockLayout
from .notation import Notation, numbered, strip_prefix
from .patch import apply, for_sae

CLIP_L_LAYERS = "text_encoder.text_model.encoder.layers."  # CLIP-L's canonical layer names
TEXT_LAYER = "text_layer"  # Block.kind of a text-encoder layer: its module's forward is patched on a CLIP clone


class TextNotation(Notation):
    """The names of one encoder's layers; ``diffusers`` is the first of its diffusers prefixes + ``.i``."""

    hookpoint_prefix = ""  # checkpoints name text layers by their full diffusers name

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        e = encoder
        self._any = numbered((*e.diffusers, *e.short, f"{e.attribute}.{e.layers}"))
        self._canonical = numbered((e.diffusers[0],))

    def diffusers(self, name: str) -> str | None:
        m = self._any.match(name)
        return f"{self.encoder.diffusers[0]}.{m.group(1)}" if m else None

    def short(self, diffusers: str) -> str | None:
        m = self._canonical.match(diffusers)
        return f"{self.encoder.short[0]}.{m.group(1)}" if m else None


@dataclass(frozen=True)
class TextEncoder(Family):
    """One text encoder as ComfyUI holds it: ``attribute`` on the CLIP's ``cond_stage_model`` (clip_l, clip_g,
    t5xxl), ``token_key`` its key in the CLIP's tokens (l, g, t5xxl), ``layers`` the ModuleList path inside it,
    its diffusers layer-list prefixes (the first canonical), short codes, its released width, and whether its
    layers return ``(x, extra)`` (T5 blocks) or ``x`` (CLIP)."""

    name: str
    title: str
    attribute: str
    layers: str
    diffusers: tuple[str, ...]
    short: tuple[str, ...]
    released_width: int
    token_key: str = ""
    returns_tuple: bool = False
    classes: tuple[str, ...] = field(default=())

    @cached_property
    def notation(self) -> TextNotation:
        return TextNotation(self)

    def layer_list(self, cond_stage_model):
        """The ModuleList of this encoder's layers in a CLIP's ``cond_stage_model``, or None when it has none."""
        obj = cond_stage_model
        for part in f"{self.attribute}.{self.layers}".split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj

    def width(self, cond_stage_model) -> int:
        """The encoder's hidden size, from its token embedding."""
        encoder = getattr(cond_stage_model, self.attribute).transformer
        return int(encoder.get_input_embeddings().weight.shape[1])


class TextNotations(Notation):
    """The notations of several encoders (one CLIP object holds up to three)."""

    def __init__(self, encoders: tuple[TextEncoder, ...]):
        self.encoders = encoders

    def diffusers(self, name: str) -> str | None:
        return next((d for d in (e.notation.diffusers(name) for e in self.encoders) if d), None)

    def short(self, diffusers: str) -> str | None:
        return next((s for s in (e.notation.short(diffusers) for e in self.encoders) if s), None)


def encoder_of(block: Block, encoders: tuple[TextEncoder, ...]) -> TextEncoder:
    return next(e for e in encoders if block.comfy.startswith(f"{e.attribute}.{e.layers}."))


def text_layout(cond_stage_model, encoders: tuple[TextEncoder, ...], label: str) -> BlockLayout:
    """The layers of every declared encoder that a CLIP's ``cond_stage_model`` holds."""
    present = tuple(e for e in encoders if e.layer_list(cond_stage_model) is not None)
    blocks = []
    for e in present:
        width = e.width(cond_stage_model)
        blocks += [Block.named(e.notation, f"{e.diffusers[0]}.{i}", f"{e.attribute}.{e.layers}.{i}", width,
                               kind=TEXT_LAYER, index=i)
                   for i in range(len(e.layer_list(cond_stage_model)))]
    return BlockLayout(label, blocks, TextNotations(present))


def resolve_text_layer(layout: BlockLayout, text: str, d_in: int, encoders: tuple[TextEncoder, ...]) -> Block:
    """The layer named by ``text``, whose width must be the SAE's. Concept Steerers' Flux run names call T5 block i
    ``text_encoder.text_model.encoder.layers.i``: a CLIP-L name whose layer is missing or of another width means
    the same-numbered T5 block when that one has the SAE's width (mapped by the model at hand)."""
    name = strip_prefix(text)
    diffusers = layout.notation.diffusers(name)
    named = next((b for b in layout if b.diffusers == diffusers or b.comfy == name), None)
    if named is not None and named.channels == d_in:
        return named
    m = re.search(r"\.(\d+)$", diffusers or "")
    if m and diffusers.startswith(CLIP_L_LAYERS):
        fits = [b for b in layout if b.channels == d_in and b.index == int(m.group(1))
                and encoder_of(b, encoders).returns_tuple]
        if len(fits) == 1:
            return fits[0]
    if named is None:
        layout.resolve(text)  # raises: the layer does not exist, listing the valid ones
    fitting = [b.short for b in layout if b.channels == d_in]
    hint = f"layers of this CLIP with width {d_in}: {fitting[0]} .. {fitting[-1]}" if fitting else \
        "no encoder of this CLIP has width " + f"{d_in} (it has " + \
        ", ".join(sorted({f"{encoder_of(b, encoders).title} {b.channels}" for b in layout})) + \
        "); use an SAE trained on one of its encoders"
    raise SAEInputError(f"the SAE has width {d_in} but layer {named.label()} has width {named.channels}; {hint}")


@dataclass(frozen=True)
class TextLayerView:
    """One call of a text-encoder layer: its output x (N, T, C), seen as N rows of a (1, T) grid of tokens."""

    x_out: Tensor

    @property
    def n_rows(self) -> int:
        return self.x_out.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        return (1, self.x_out.shape[1])

    def sae_input(self, input_kind: str | None) -> Tensor:
        """(N, 1, T, C): a text layer's SAE reads its output (the residual stream), whatever the SAE's kind."""
        return for_sae(self.x_out)[:, None]

    def with_delta(self, delta: Tensor) -> Tensor:
        return self.x_out + delta[:, 0].to(self.x_out.dtype)


def patched_layer_output(patch, output, ctx, returns_tuple: bool):
    """What a patched text layer returns for ``patch`` (a BlockPatch): its own output object when unchanged."""
    if not returns_tuple:
        return apply(patch, TextLayerView(output), ctx, output)
    x = output[0]
    y = apply(patch, TextLayerView(x), ctx, x)
    return output if y is x else (y, *output[1:])
