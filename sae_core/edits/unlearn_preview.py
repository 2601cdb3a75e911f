"""What an unlearning setting will suppress, as text and as a chart: features x steps, coloured by score."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..blocks.names import short_code
from ..render import BACKGROUND, INK, font, heat_colors, text_size
from .unlearn import ConceptSelection

NOT_SELECTED = (235, 235, 235)
MAX_ROWS = 24


def selection_matrix(selection: ConceptSelection, max_features: int = MAX_ROWS) -> tuple[list[int], np.ndarray]:
    """Features selected at any step (strongest first) and their scores, (features, steps), NaN where not selected."""
    best: dict[int, float] = {}
    for step in selection.steps:
        for f, s in zip(step.features.tolist(), step.scores.tolist()):
            best[f] = max(best.get(f, -np.inf), s)
    features = sorted(best, key=lambda f: (-best[f], f))[:max_features]
    row = {f: i for i, f in enumerate(features)}
    matrix = np.full((len(features), len(selection.steps)), np.nan)
    for t, step in enumerate(selection.steps):
        for f, s in zip(step.features.tolist(), step.scores.tolist()):
            if f in row:
                matrix[row[f], t] = s
    return features, matrix


def _ranges(steps: list[int]) -> str:
    parts, start = [], None
    for i, s in enumerate(steps):
        if start is None:
            start = s
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def selection_report(selections: list[ConceptSelection], max_features: int = MAX_ROWS) -> str:
    """Per concept: the setting, how many features per step, and each feature's steps, best score and scale."""
    lines = []
    for sel in selections:
        p = sel.profile
        counts = [int(s.features.numel()) for s in sel.steps]
        features, matrix = selection_matrix(sel, max_features=10 ** 9)
        lines.append(f"{p.describe()}")
        lines.append(f"percentile {sel.percentile:g}, multiplier {sel.multiplier:g}: {min(counts)}-{max(counts)} "
                     f"features per step, {len(features)} distinct")
        for f, row in zip(features[:max_features], matrix):
            steps = [t for t in range(len(row)) if not np.isnan(row[t])]
            scales = [float(sel.steps[t].scales[sel.steps[t].features.tolist().index(f)]) for t in steps]
            lines.append(f"  feature {f}: steps {_ranges(steps)}; score up to {np.nanmax(row):.4g}; "
                         f"scale {min(scales):.3g}..{max(scales):.3g}")
        if len(features) > max_features:
            lines.append(f"  ... and {len(features) - max_features} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class Panel:
    """Geometry of one concept's matrix in the chart (for drawing and for pixel tests)."""

    top: int
    left: int
    cell_w: int
    cell_h: int
    features: list[int]
    matrix: np.ndarray

    def cell_center(self, row: int, col: int) -> tuple[int, int]:
        return (self.left + col * self.cell_w + self.cell_w // 2, self.top + row * self.cell_h + self.cell_h // 2)

    @property
    def bottom(self) -> int:
        return self.top + len(self.features) * self.cell_h


def selection_chart(selections: list[ConceptSelection], width: int = 720, max_features: int = MAX_ROWS,
                    ) -> tuple[Image.Image, list[Panel]]:
    """One panel per concept: a row per selected feature, a column per step; coloured cells are selected
    (blue = lowest score of the panel, red = highest), grey cells are not."""
    fnt, title_font = font(13), font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    panels, height = [], 8
    for sel in selections:
        features, matrix = selection_matrix(sel, max_features)
        label_w = max([text_size(probe, f"#{f}", fnt)[0] for f in features] + [30]) + 16
        cell_w = max(3, min(28, (width - label_w - 16) // max(1, matrix.shape[1])))
        cell_h = 18
        panels.append(Panel(height + 28, label_w, cell_w, cell_h, features, matrix))
        height = panels[-1].bottom + (40 if features else 30)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for sel, panel in zip(selections, panels):
        draw.text((8, panel.top - 24), f"'{sel.name}' at {short_code(sel.profile.block)}: percentile "
                  f"{sel.percentile:g}, multiplier {sel.multiplier:g}", fill=INK, font=title_font)
        if not panel.features:
            draw.text((8, panel.top), "no feature selected at any step", fill=INK, font=fnt)
            continue
        finite = panel.matrix[~np.isnan(panel.matrix)]
        low, high = float(finite.min()), float(finite.max())
        for r, f in enumerate(panel.features):
            draw.text((8, panel.top + r * panel.cell_h + 2), f"#{f}", fill=INK, font=fnt)
            for c in range(panel.matrix.shape[1]):
                x0, y0 = panel.left + c * panel.cell_w, panel.top + r * panel.cell_h
                value = panel.matrix[r, c]
                if np.isnan(value):
                    colour = NOT_SELECTED
                else:
                    colour = tuple(int(v) for v in heat_colors(np.array((value - low) / (high - low)
                                                                        if high > low else 1.0)))
                draw.rectangle([x0, y0, x0 + panel.cell_w - 2, y0 + panel.cell_h - 2], fill=colour)
        n_steps = panel.matrix.shape[1]
        draw.text((8, panel.bottom + 2), "step", fill=INK, font=fnt)
        for c in sorted({0, n_steps // 2, n_steps - 1}):
            draw.text((panel.left + c * panel.cell_w, panel.bottom + 2), str(c), fill=INK, font=fnt)
    return img, panels
