"""Additions to the shared renderer used by the heatmap nodes: colormaps, bilinear upsampling, caption size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sae_core import render


@pytest.mark.parametrize("name, low, high", [("viridis", (68, 1, 84), (253, 231, 37)),
                                             ("inferno", (0, 0, 4), (252, 255, 164)),
                                             ("gray", (0, 0, 0), (255, 255, 255))])
def test_colormap_ends(name, low, high):
    colours = render.heat_colors(np.array([0.0, 1.0]), name)
    assert tuple(colours[0]) == low and tuple(colours[1]) == high


def test_unknown_colormap_is_named():
    with pytest.raises(ValueError, match="colormap 'rainbow' is not known; valid: jet, viridis"):
        render.heat_colors(np.zeros(2), "rainbow")


def test_overlay_uses_the_chosen_colormap():
    heat = np.zeros((2, 2))
    heat[0, 1] = 1.0
    out = render.overlay_heatmap(np.zeros((20, 40, 3), np.uint8), heat, alpha=1.0, colormap="gray")
    assert (out[:10, 20:] > 230).all() and (out[:10, :20] == 0).all() and (out[10:] == 0).all()


def test_bilinear_upsampling_keeps_the_aspect_and_interpolates():
    grid = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    up = render.upsample(grid, 10, 30, "bilinear")
    assert up.shape == (10, 30)
    assert np.allclose(up[:, 14], 0.95) and np.allclose(up[:, 15], 0.95)  # around the middle cell's centre
    assert up[5, 0] == pytest.approx(0.0) and 0 < up[5, 12] < 1  # smooth in between
    assert np.allclose(up[0], up[-1])                        # constant along the height


def test_caption_font_size_scales_the_text():
    tiles = [np.full((40, 200, 3), 255, np.uint8)]

    def ink(size):
        grid = render.pil_to_array(render.labelled_grid(tiles, ["#4998 mean 1.2"], label_height=size + 12,
                                                        font_size=size))
        caption = grid[40:]
        rows = np.where((caption < 100).all(-1).any(1))[0]
        return rows.max() - rows.min()

    assert ink(32) > 1.8 * ink(14)


def test_captions_are_as_large_as_fit_their_tile():
    """A 2x3 heatmap grid of 512-px tiles (1544 px wide) previewed in a node: captions grow with the tile up to the
    size at which the longest one still fits inside it."""
    label = "#1355  mean 14.5  peak 16.2"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = {}
    for width in (128, 256, 512, 1024):
        style = render.caption_style(width, [label, "#7  mean 1  peak 2"])
        sizes[width] = style["font_size"]
        assert style["label_height"] == style["font_size"] + 12
        assert render.text_size(measure, label, render.font(style["font_size"]))[0] <= max(width - 8, 0) or \
            style["font_size"] == 14
    assert sizes[128] == 14 and sizes[256] < sizes[512] < sizes[1024]
    assert sizes[512] >= 32  # was 21 (a 24th of the tile), too small to read at 90 % zoom
    tiles = [np.full((512, 512, 3), 255, np.uint8)] * 6
    style = render.caption_style(512, [label])
    grid = render.pil_to_array(render.labelled_grid(tiles, [label] * 6, columns=3, **style))
    strip = grid[512:512 + sizes[512] + 12, :512]
    ink = np.where((strip < 100).all(-1).any(0))[0]
    assert ink.max() < 512 - 2 and ink.max() - ink.min() > 0.6 * 512  # wide, and inside its own tile


def test_grids_of_one_tile_size_have_one_layout_whatever_their_captions():
    """A batch's heatmap grids are stacked into one image tensor: their captions must not change their size."""
    from sae_core.observe import pictures

    image = np.zeros((256, 256, 3), np.float32)
    maps = np.random.default_rng(0).random((2, 4, 4))
    short = pictures.overlay_grid(image, maps, ["#1  mean 1  peak 2", "#2  mean 1  peak 2"])
    long = pictures.overlay_grid(image, maps, ["#51199  mean 1.23e+03  peak 4.56e+03"] * 2)
    assert short.size == long.size
