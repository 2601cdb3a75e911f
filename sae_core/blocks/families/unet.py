"""The U-Net families: SDXL (Turbo, base and the distilled SDXL variants) and SD1.5 (and its instruct-pix2pix
variant); their blocks are found in the loaded model, the tables are the released models' layouts. Any other
U-Net with SpatialTransformer blocks (SD2.x, say) is patched as a family named after its model class."""
from ..family import UNetFamily

SDXL = UNetFamily(
    name="sdxl",
    title="SDXL",
    classes=("SDXL", "SDXLRefiner"),  # SSD1B, Segmind_Vega, KOALA_*, SDXL_instructpix2pix derive from SDXL
    table=(
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
    ),
)

SD15 = UNetFamily(
    name="sd15",
    title="SD1.5",
    classes=("SD15",),  # SD15_instructpix2pix derives from it
    table=(
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
    ),
)


def other_unet(label: str) -> UNetFamily:
    """A U-Net of no registered family: patched the same way, named after its model class (``SD20`` -> sd20)."""
    return UNetFamily(name=label.lower(), title=label, classes=(label,))
