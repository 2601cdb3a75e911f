"""Qwen-Image (comfy/ldm/qwen_image/model.py): 60 dual-stream blocks ``transformer_blocks.i`` (the same name in
diffusers), replaced as ComfyUI's ``double_block``; real CFG; edit models append reference-image tokens."""
from ..dit import DOUBLE, BlockList
from ..family import DiTFamily

FAMILY = DiTFamily(
    name="qwen_image",
    title="Qwen-Image",
    classes=("QwenImageTransformer2DModel",),
    blocks=(BlockList(DOUBLE, "transformer_blocks", "transformer_blocks", ("block",)),),
    width=lambda model: model.img_in.out_features,
)
