"""Pictures from numbers with numpy + pillow only: a jet-like colormap, heatmap overlays, bar and line
charts, and labelled grids. Everything returns uint8 RGB arrays or PIL images."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID_LINE = (225, 225, 225)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
# how overlay_heatmap (and the sidebar's heatmaps, through sae_core.frontend) paint a map: colour bins, opacity
HEATMAP_BINS = 10
HEATMAP_ALPHA = 0.6
# jet: dark blue -> blue -> cyan -> yellow -> red -> dark red
_JET_STOPS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_JET_RGB = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], float)
_QUARTERS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
# name -> (stops, RGB at the stops); viridis and inferno are sampled from matplotlib's definitions
COLORMAPS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "jet": (_JET_STOPS, _JET_RGB),
    "viridis": (_QUARTERS,
                np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)),
    "inferno": (_QUARTERS, np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], float)),
    "gray": (np.array([0.0, 1.0]), np.array([[0, 0, 0], [255, 255, 255]], float)),
}


def normalize(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros (nothing stands out)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def heat_colors(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colours (..., 3) uint8 for values in [0, 1]: jet-like by default, or any name in COLORMAPS."""
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap {colormap!r} is not known; valid: {', '.join(COLORMAPS)}")
    stops, rgb = COLORMAPS[colormap]
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(v, stops, rgb[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def as_uint8_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] or uint8 -> uint8."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


UPSAMPLE_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


def upsample(grid: np.ndarray, height: int, width: int, mode: str = "nearest") -> np.ndarray:
    """A (h, w) map resized to (height, width) by PIL (pixel centres aligned, as torch's align_corners=False):
    ``nearest`` keeps the grid's cells as blocks, ``bilinear`` smooths them; any aspect ratio."""
    resized = Image.fromarray(np.asarray(grid, dtype=np.float32)).resize((width, height), UPSAMPLE_FILTERS[mode])
    return np.asarray(resized, dtype=np.float32)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = HEATMAP_ALPHA, bins: int = HEATMAP_BINS,
                    normalized: bool = False, colormap: str = "jet") -> np.ndarray:
    """Composite a block-grid heat map over an image, as the paper's demo does.

    The map is upsampled (nearest) to the image, min-max normalised (unless ``normalized``), quantised
    into ``bins`` colour bins; the lowest bin stays transparent, the others are blended with ``alpha``.
    """
    base = as_uint8_image(image)
    height, width = base.shape[:2]
    values = np.asarray(heat, dtype=np.float64)
    values = values if normalized else normalize(values)
    values = upsample(values, height, width).astype(np.float64)  # the bins and colours in double precision
    quantised = np.minimum(np.floor(values * bins), bins - 1)
    colours = heat_colors((quantised + 0.5) / bins, colormap).astype(np.float64)
    visible = (quantised > 0)[..., None]
    blended = base.astype(np.float64) * (1 - alpha) + colours * alpha
    return np.where(visible, blended, base).round().astype(np.uint8)


@lru_cache(maxsize=8)
def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1), else its bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, fnt) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return right - left, bottom - top


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** np.floor(np.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)


def bar_chart(labels: list[str], values: list[float], title: str = "", width: int = 640, bar_height: int = 24,
              color: tuple[int, int, int] = PALETTE[0], value_format: str = "{:.3g}") -> Image.Image:
    """Horizontal bars, largest first as given; labels on the left, values at the bar ends."""
    fnt, title_font = font(14), font(16)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max([text_size(measure, str(label), fnt)[0] for label in labels] + [40])
    top = 36 if title else 10
    height = top + bar_height * max(len(values), 1) + 16
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 8), title, fill=INK, font=title_font)
    x0, x1 = label_width + 20, width - 70
    vmax = max([abs(float(v)) for v in values] + [1e-12])
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * bar_height
        draw.text((10, y + 4), str(label), fill=INK, font=fnt)
        length = int(round((x1 - x0) * abs(float(value)) / vmax))
        draw.rectangle([x0, y + 3, x0 + max(length, 1), y + bar_height - 4], fill=color)
        draw.text((x0 + length + 6, y + 4), value_format.format(float(value)), fill=INK, font=fnt)
    return img


def line_chart(series: dict[str, list[float]], title: str = "", x_label: str = "", y_label: str = "",
               width: int = 640, height: int = 360, x_values: list[float] | None = None) -> Image.Image:
    """One coloured line per series with a legend; y starts at 0 unless values go negative."""
    fnt, title_font = font(13), font(16)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 64, width - 16, 40 if title else 16, height - 44
    if title:
        draw.text((10, 8), title, fill=INK, font=title_font)
    all_values = [float(v) for values in series.values() for v in values] or [0.0]
    y_min = min(0.0, min(all_values))
    y_max = _nice_max(max(all_values)) if max(all_values) > 0 else 1.0
    n = max((len(v) for v in series.values()), default=1)
    xs = list(x_values) if x_values is not None else list(range(n))
    x_min, x_max = (min(xs), max(xs)) if len(xs) > 1 else (0.0, 1.0)

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_min) / (x_max - x_min) if x_max > x_min else 0.5
        fy = (y - y_min) / (y_max - y_min) if y_max > y_min else 0.0
        return left + fx * (right - left), bottom - fy * (bottom - top)

    for i in range(5):
        y = y_min + (y_max - y_min) * i / 4
        _, py = px(x_min, y)
        draw.line([(left, py), (right, py)], fill=GRID_LINE)
        draw.text((6, py - 7), f"{y:.3g}", fill=INK, font=fnt)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK)
    for x in (xs[0], xs[len(xs) // 2], xs[-1]) if xs else ():
        draw.text((px(x, y_min)[0] - 8, bottom + 4), f"{x:.4g}", fill=INK, font=fnt)
    if x_label:
        draw.text(((left + right) // 2 - 30, height - 20), x_label, fill=INK, font=fnt)
    if y_label:
        draw.text((left + 4, top - 16 if not title else top), y_label, fill=INK, font=fnt)
    legend_y = top + 2
    for i, (name, values) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = [px(xs[j], float(v)) for j, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=color, width=3)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        w, _ = text_size(draw, name, fnt)
        draw.rectangle([right - w - 30, legend_y + 4, right - w - 18, legend_y + 14], fill=color)
        draw.text((right - w - 12, legend_y), name, fill=INK, font=fnt)
        legend_y += 18
    return img


CAPTION_REFERENCE = "#00000  mean 00.0  peak 00.0"  # a heatmap tile's usual caption at its longest


def caption_style(tile_width: int, labels: tuple[str, ...] | list[str] = (CAPTION_REFERENCE,),
                  smallest: int = 14) -> dict:
    """Caption text as large as fits: up to a tenth of the tile's width, shrunk until the longest caption fits the
    tile (never below ``smallest``), so that a big grid previewed small in a node stays legible. By default sized
    for CAPTION_REFERENCE, so that every grid of one tile size has one layout (a batch's grids stack)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    room = max(tile_width - 8, 1)
    reference = 100
    widest = max([text_size(measure, label, font(reference))[0] for label in labels] + [1])
    size = max(smallest, min(tile_width // 10, int(reference * room / widest)))
    while size > smallest and max(text_size(measure, label, font(size))[0] for label in labels) > room:
        size -= 1
    return {"font_size": size, "label_height": size + 12}


def labelled_grid(images: list[np.ndarray | Image.Image], labels: list[str], columns: int = 3,
                  label_height: int = 24, gap: int = 4, font_size: int | None = None) -> Image.Image:
    """Tiles of equal size with a caption strip under each (text ``font_size`` px, default fits the strip)."""
    if not images:
        raise ValueError("no images to put in a grid")
    tiles = [img if isinstance(img, Image.Image) else Image.fromarray(as_uint8_image(img)) for img in images]
    w, h = tiles[0].size
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * (w + gap) - gap, rows * (h + label_height + gap) - gap), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    fnt = font(font_size or max(12, min(18, label_height - 8)))
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x, y = (i % columns) * (w + gap), (i // columns) * (h + label_height + gap)
        grid.paste(tile.convert("RGB").resize((w, h)), (x, y))
        draw.text((x + 4, y + h + 3), label, fill=INK, font=fnt)
    return grid


def pil_to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
