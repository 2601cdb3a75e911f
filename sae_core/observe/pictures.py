"""Pictures of a recording: overlays of feature maps on the generated image, masks, charts.

Maps live on the block's grid (e.g. 16x16 for a 512 px SDXL image at down.2.1, 16x24 for 512x768);
they are upsampled to the image's own height and width, so any resolution and aspect ratio works.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .. import render
from ..errors import SAEInputError
from ..tables import text_table
from ..validate import check_choice
from .analysis import FeatureStats

UPSCALE_MODES = tuple(render.UPSAMPLE_FILTERS)


def upsample(grid_map: np.ndarray, height: int, width: int, mode: str = "nearest") -> np.ndarray:
    check_choice("upscale", mode, UPSCALE_MODES)
    return render.upsample(grid_map, height, width, mode)


def feature_mask(grid_map: np.ndarray, height: int, width: int, mode: str = "nearest") -> np.ndarray:
    """A feature's map as a mask in [0, 1] at image size: activation / its peak (0 where it does not fire)."""
    values = np.clip(np.asarray(grid_map, np.float32), 0.0, None)
    peak = float(values.max())
    scaled = values / peak if peak > 0 else np.zeros_like(values)
    return np.clip(upsample(scaled, height, width, mode), 0.0, 1.0)


def tile_label(feature: int, mean: float, peak: float, extra: str = "") -> str:
    return f"#{feature}  mean {mean:.3g}  peak {peak:.3g}{extra}"


def overlay_grid(image: np.ndarray, maps: np.ndarray, labels: list[str], *, colormap: str = "jet",
                 alpha: float = 0.6, columns: int = 3) -> Image.Image:
    """One overlay per map (F, h, w) on ``image`` (H, W, 3), laid out in a labelled grid."""
    tiles = [render.overlay_heatmap(image, m, alpha=alpha, colormap=colormap) for m in maps]
    return render.labelled_grid(tiles, labels, columns=columns, **render.caption_style(image.shape[1]))


def overlay_step_grid(image: np.ndarray, maps: np.ndarray, features: list[int], steps: list[int], *,
                      colormap: str = "jet", alpha: float = 0.6) -> Image.Image:
    """Rows of features, columns of steps: maps (S, F, h, w)."""
    tiles, labels = [], []
    for f_i, feature in enumerate(features):
        for s_i, step in enumerate(steps):
            tiles.append(render.overlay_heatmap(image, maps[s_i, f_i], alpha=alpha, colormap=colormap))
            labels.append(f"#{feature}  step {step}")
    return render.labelled_grid(tiles, labels, columns=len(steps), **render.caption_style(image.shape[1]))


def top_features_chart(stats: FeatureStats, title: str) -> Image.Image:
    labels = [f"#{int(f)}" for f in stats.features]
    values = [float(v) for v in stats.mean]
    if not labels:
        raise SAEInputError(f"no feature fired in {title}; nothing to chart")
    return render.bar_chart(labels, values, title=f"mean activation: {title}")


def timeline_chart(steps: list[int], features: list[int], values: np.ndarray, title: str) -> Image.Image:
    series = {f"#{f}": [float(v) for v in values[:, i]] for i, f in enumerate(features)}
    return render.line_chart(series, title=title, x_label="step", y_label="mean activation",
                             x_values=[float(s) for s in steps])


def timeline_table(steps: list[int], features: list[int], values: np.ndarray) -> str:
    return text_table(["step"] + [f"#{f}" for f in features],
                      [[s] + [f"{float(v):.4g}" for v in values[i]] for i, s in enumerate(steps)])
