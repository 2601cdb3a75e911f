"""Block names in the three notations, resolved against a layout."""
from __future__ import annotations

import pytest

from sae_core.blocks.families.unet import SD15, SDXL
from sae_core.blocks.names import diffusers_name, infer_model_family, short_code
from sae_core.blocks.names import unet_comfy_path as comfy_path
from sae_core.errors import SAEInputError

SDXL_LAYOUT, SD15_LAYOUT = SDXL.static_layout, SD15.static_layout


@pytest.mark.parametrize("text, expected", [
    ("down.2.1", "input_blocks.8.1"),
    ("mid.0", "middle_block.1"),
    ("mid", "middle_block.1"),
    ("up.0.0", "output_blocks.0.1"),
    ("up.0.1", "output_blocks.1.1"),
    ("unet.up_blocks.0.attentions.1", "output_blocks.1.1"),
    ("down_blocks.2.attentions.1", "input_blocks.8.1"),
    (" input_blocks.8.1 ", "input_blocks.8.1"),
    ("diffusion_model.output_blocks.1.1", "output_blocks.1.1"),
])
def test_sdxl_paper_blocks_resolve_in_every_notation(text, expected):
    assert SDXL_LAYOUT.resolve(text).comfy == expected


def test_saeuron_blocks_on_sd15():
    assert SD15_LAYOUT.resolve("up.1.1").comfy == "output_blocks.4.1"
    assert SD15_LAYOUT.resolve("unet.up_blocks.1.attentions.2").comfy == "output_blocks.5.1"
    assert SD15_LAYOUT.resolve("up.1.2").channels == 1280
    assert SDXL_LAYOUT.resolve("up.1.2").channels == 640


def test_unknown_block_lists_valid_names():
    with pytest.raises(SAEInputError) as info:
        SDXL_LAYOUT.resolve("up.3.0")
    message = str(info.value)
    assert "'up.3.0' does not exist in this SDXL model" in message
    assert "down.2.1 / down_blocks.2.attentions.1 / input_blocks.8.1" in message
    with pytest.raises(SAEInputError, match="no block given"):
        SDXL_LAYOUT.resolve("  ")


def test_name_helpers():
    assert diffusers_name("up.0.1") == "up_blocks.0.attentions.1"
    assert diffusers_name("input_blocks.8.1") is None
    assert comfy_path("input_blocks.8.1") == "input_blocks.8.1"
    assert comfy_path("down.2.1") is None
    assert short_code("unet.mid_block.attentions.0") == "mid.0"


def test_layout_from_key_map_orders_and_filters():
    key_map = {
        "up_blocks.0.attentions.1.proj_in.weight": "output_blocks.1.1.proj_in.weight",
        "down_blocks.2.attentions.1.proj_in.weight": "input_blocks.8.1.proj_in.weight",
        "mid_block.attentions.0.proj_in.weight": "middle_block.1.proj_in.weight",
        "down_blocks.2.attentions.1.proj_out.weight": "input_blocks.8.1.proj_out.weight",
        "conv_in.weight": "input_blocks.0.0.weight",
    }
    channels = {"output_blocks.1.1": 1280, "input_blocks.8.1": 1280, "middle_block.1": 1280}
    layout = SDXL.layout_from_key_map(key_map, channels, "SDXL")
    assert [b.comfy for b in layout] == ["input_blocks.8.1", "middle_block.1", "output_blocks.1.1"]
    assert layout.resolve("up.0.1").diffusers == "up_blocks.0.attentions.1"


def test_family_inference():
    assert infer_model_family("unet.up_blocks.1.attentions.1", 1280) == "sd15"
    assert infer_model_family("unet.up_blocks.1.attentions.1", 640) == "sdxl"
    assert infer_model_family("unet.up_blocks.0.attentions.1", 1280) == "sdxl"
    assert infer_model_family("unet.mid_block.attentions.0", 1280) is None  # both have it
    assert infer_model_family(None, 1280) is None


def test_lists_and_ranges_of_blocks():
    assert [b.short for b in SDXL_LAYOUT.resolve_many("up.0.0-2, down.2.1, up.0.1")] == [
        "up.0.0", "up.0.1", "up.0.2", "down.2.1"]  # in the order given, each once
    assert [b.comfy for b in SD15_LAYOUT.resolve_many("up_blocks.1.attentions.1-2")] == [
        "output_blocks.4.1", "output_blocks.5.1"]
    with pytest.raises(SAEInputError, match="first <= last"):
        SDXL_LAYOUT.resolve_many("up.0.2-0")
    with pytest.raises(SAEInputError, match="'up.0.3' does not exist"):
        SDXL_LAYOUT.resolve_many("up.0.1-3")
    with pytest.raises(SAEInputError, match="no block given"):
        SDXL_LAYOUT.resolve_many(" , ")
