"""Rendering checked by pixels: where the colours are, not only the shapes."""
from __future__ import annotations

import numpy as np
import pytest

from sae_core import render


def test_colormap_runs_blue_to_red():
    cold, mid, hot = render.heat_colors(np.array([0.0, 0.5, 1.0]))
    assert cold[2] > 100 and cold[0] == 0          # blue end
    assert hot[0] > 100 and hot[2] == 0             # red end
    assert mid[1] > 200                             # green-ish middle


def test_overlay_paints_only_where_the_map_is_hot():
    image = np.full((64, 96, 3), 128, np.uint8)     # non-square image
    heat = np.zeros((4, 6))
    heat[1, 4] = 5.0                                # one hot cell of a 4x6 grid
    out = render.overlay_heatmap(image, heat, alpha=0.6)
    cell = out[16:32, 64:80]
    assert (cell[..., 0] > 150).all() and (cell[..., 2] < 100).all()   # red-ish
    untouched = np.ones((64, 96), bool)
    untouched[16:32, 64:80] = False
    assert (out[untouched] == 128).all()            # lowest bin is transparent: exact original pixels


def test_overlay_of_a_constant_map_changes_nothing():
    image = np.random.default_rng(0).random((20, 20, 3))
    out = render.overlay_heatmap(image, np.ones((5, 5)))
    assert np.array_equal(out, render.as_uint8_image(image))


def test_upsample_nearest_keeps_blocks():
    grid = np.array([[1, 2], [3, 4]])
    up = render.upsample(grid, 4, 6)
    assert up.shape == (4, 6)
    assert (up[:2, :3] == 1).all() and (up[2:, 3:] == 4).all()


def _colour_mask(img, colour, tol=10):
    return (np.abs(render.pil_to_array(img).astype(int) - np.array(colour)) <= tol).all(-1)


def test_bar_chart_bar_lengths_follow_values():
    img = render.bar_chart(["#12", "#7", "#3"], [4.0, 2.0, 1.0], title="top features")
    bars = _colour_mask(img, render.PALETTE[0])
    row_lengths = [bars[r].sum() for r in range(bars.shape[0])]
    lengths = sorted({n for n in row_lengths if n > 0}, reverse=True)
    assert len(lengths) >= 3
    assert lengths[0] == pytest.approx(2 * lengths[1], rel=0.05)
    assert lengths[1] == pytest.approx(2 * lengths[2], rel=0.1)
    dark = (render.pil_to_array(img) < 80).all(-1)
    assert dark[:, :60].sum() > 20                  # labels are drawn on the left


def test_line_chart_draws_each_series_in_its_colour():
    img = render.line_chart({"a": [0, 1, 2, 3], "b": [3, 2, 1, 0]}, title="t", x_label="step")
    a, b = _colour_mask(img, render.PALETTE[0]), _colour_mask(img, render.PALETTE[1])
    assert a.sum() > 100 and b.sum() > 100
    # a rises to the right, b falls: compare mean row of the left and right thirds of each line
    w = a.shape[1]
    rows = np.arange(a.shape[0])[:, None]
    left_a = (rows * a[:, : w // 3]).sum() / a[:, : w // 3].sum()
    right_a = (rows * a[:, 2 * w // 3:]).sum() / a[:, 2 * w // 3:].sum()
    assert right_a < left_a                         # higher value = smaller row index


def test_labelled_grid_places_tiles_and_captions():
    red = np.zeros((10, 12, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((10, 12, 3), np.uint8)
    blue[..., 2] = 255
    grid = render.pil_to_array(render.labelled_grid([red, blue, red], ["a", "b", "c"], columns=2, label_height=20))
    assert grid.shape == (2 * (10 + 20 + 4) - 4, 2 * (12 + 4) - 4, 3)
    assert (grid[0:10, 0:12] == [255, 0, 0]).all() and (grid[0:10, 16:28] == [0, 0, 255]).all()
    assert (grid[10:30, 0:12] < 100).all(-1).any()   # caption ink under the first tile
