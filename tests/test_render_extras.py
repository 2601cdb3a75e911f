"""Additions to the shared renderer used by the heatmap nodes: colormaps, bilinear upsampling, caption size."""
from __future__ import annotations

import numpy as np
import pytest

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
    up = render.upsample_bilinear(grid, 10, 30)
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
