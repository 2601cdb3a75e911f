"""Flux.1 (dev, schnell, Kontext) and Flux.2 (comfy/ldm/flux/model.py): 19 double-stream blocks
(``double_blocks.i``, diffusers ``transformer_blocks.i``) then 38 single-stream blocks (``single_blocks.i``,
diffusers ``single_transformer_blocks.i``, one sequence ``cat(txt, img)``) for Flux.1; guidance is embedded, so it
runs at cfg 1."""
from ..dit import DOUBLE, IMAGE_AFTER_TEXT, SINGLE, BlockList
from ..family import DiTFamily

FAMILY = DiTFamily(
    name="flux",
    title="Flux",
    classes=("Flux",),
    blocks=(BlockList(DOUBLE, "double_blocks", "transformer_blocks", ("block", "double")),
            BlockList(SINGLE, "single_blocks", "single_transformer_blocks", ("single",), IMAGE_AFTER_TEXT)),
    width=lambda model: model.img_in.out_features,
)
