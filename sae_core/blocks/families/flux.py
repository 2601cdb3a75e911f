"""Flux.1 (dev, schnell, Kontext) and Flux.2 (comfy/ldm/flux/model.py): 19 double-stream blocks
(``double_blocks.i``, diffusers ``transformer_blocks.i``) then 38 single-stream blocks (``single_blocks.i``,
diffusers ``single_transformer_blocks.i``) for Flux.1; guidance is embedded, so it runs at cfg 1."""
from ..dit import DOUBLE, SINGLE, BlockList, DiTFamily

FAMILY = DiTFamily(
    name="flux",
    title="Flux",
    class_names=("Flux",),
    blocks=(BlockList(DOUBLE, "double_blocks", "transformer_blocks"),
            BlockList(SINGLE, "single_blocks", "single_transformer_blocks")),
    width=lambda model: model.img_in.out_features,
)
