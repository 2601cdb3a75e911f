"""Qwen-Image (comfy/ldm/qwen_image/model.py): 60 dual-stream blocks ``transformer_blocks.i`` (the same name in
diffusers), replaced as ComfyUI's ``double_block``; real CFG; edit models append reference-image tokens."""
from ..dit import DOUBLE, BlockList, DiTFamily

FAMILY = DiTFamily(
    name="qwen_image",
    title="Qwen-Image",
    class_names=("QwenImageTransformer2DModel",),
    blocks=(BlockList(DOUBLE, "transformer_blocks", "transformer_blocks"),),
    width=lambda model: model.img_in.out_features,
)
