"""Stable Diffusion 3 / 3.5 MMDiT (comfy/ldm/modules/diffusionmodules/mmdit.py): joint blocks ``joint_blocks.i``
(diffusers ``transformer_blocks.i``), replaced as ComfyUI's ``double_block``; real CFG."""
from ..dit import DOUBLE, BlockList
from ..family import DiTFamily

FAMILY = DiTFamily(
    name="sd3",
    title="SD3/3.5",
    classes=("MMDiT",),
    blocks=(BlockList(DOUBLE, "joint_blocks", "transformer_blocks", ("block", "joint")),),
    width=lambda model: model.hidden_size,
)
