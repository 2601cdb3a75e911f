"""Score tables as text, CSV and JSON, and the bar chart of UA / IRA / CRA (what the node shows and the CLI
writes). Scores are shown in percent, as the paper reports them."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..files import atomic_write_text
from ..render import BACKGROUND, GRID_LINE, INK, PALETTE, font, text_size
from ..tables import text_table
from .metrics import UnlearningScores

COLUMNS = ("concept", "setting", "percentile", "multiplier", "UA", "IRA", "CRA", "UA_IRA_mean", "FID", "images",
           "best")
METRICS = ("UA", "IRA", "CRA")


def _pct(value: float | None) -> float | None:
    return None if value is None else round(value * 100.0, 4)


def score_row(concept: str, setting_label: str, scores: UnlearningScores, *, percentile: float | None = None,
              multiplier: float | None = None, best: bool = False) -> dict:
    return {"concept": concept, "setting": setting_label, "percentile": percentile, "multiplier": multiplier,
            "UA": _pct(scores.ua), "IRA": _pct(scores.ira), "CRA": _pct(scores.cra),
            "UA_IRA_mean": _pct(scores.selection_score), "FID": None if scores.fid is None else round(scores.fid, 4),
            "images": scores.n_images, "best": best}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "best" if value else ""
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def format_rows(rows: Sequence[dict]) -> str:
    """A fixed-width text table (UA, IRA, CRA and their mean in percent)."""
    shown = ("concept", "setting", "UA", "IRA", "CRA", "UA_IRA_mean", "FID", "images", "best")
    heads = {"UA": "UA %", "IRA": "IRA %", "CRA": "CRA %", "UA_IRA_mean": "(UA+IRA)/2", "images": "n"}
    return text_table([heads.get(c, c) for c in shown], [[_cell(r.get(c)) for c in shown] for r in rows], align="ll")


def csv_text(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
    return out.getvalue()


def write_reports(folder: str | Path, stem: str, report: dict, rows: Sequence[dict],
                  chart: Image.Image | None) -> list[Path]:
    """``stem.json`` (everything), ``stem.csv`` (the rows) and ``stem.png`` (the chart), each written atomically."""
    folder = Path(folder)
    paths = [folder / f"{stem}.json", folder / f"{stem}.csv"]
    atomic_write_text(paths[0], json.dumps(report, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths[1], csv_text(rows))
    if chart is not None:
        from ..files import atomic_write

        paths.append(folder / f"{stem}.png")
        with atomic_write(paths[2]) as tmp:
            chart.save(tmp, format="PNG")
    return paths


def scores_chart(groups: Sequence[tuple[str, UnlearningScores]], title: str = "", width: int = 720,
                 height: int = 360) -> Image.Image:
    """Grouped vertical bars, one group per entry (e.g. each concept at its best setting, then the average):
    UA, IRA and CRA in percent (0-100), each metric in its colour; missing metrics leave a gap."""
    fnt, title_font = font(12), font(15)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 12, 36 if title else 28, height - 46
    if title:
        draw.text((10, 8), title, fill=INK, font=title_font)
    for pct in (0, 25, 50, 75, 100):
        y = bottom - (bottom - top) * pct / 100
        draw.line([(left, y), (right, y)], fill=GRID_LINE)
        draw.text((8, y - 7), f"{pct}%", fill=INK, font=fnt)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK)
    x_legend = right
    for i, name in reversed(list(enumerate(METRICS))):
        w, _ = text_size(draw, name, fnt)
        x_legend -= w + 26
        draw.rectangle([x_legend, 10, x_legend + 10, 20], fill=PALETTE[i])
        draw.text((x_legend + 14, 8), name, fill=INK, font=fnt)
    n = max(1, len(groups))
    group_w = (right - left) / n
    bar_w = max(2, int(group_w * 0.8 / len(METRICS)))
    for g, (label, scores) in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for i, value in enumerate((scores.ua, scores.ira, scores.cra)):
            if value is None:
                continue
            y = bottom - (bottom - top) * max(0.0, min(1.0, value))
            xa = int(x0 + i * bar_w)
            draw.rectangle([xa, int(y), xa + bar_w - 2, bottom], fill=PALETTE[i])
        text = label if len(label) <= 18 else label[:17] + "…"
        w, _ = text_size(draw, text, fnt)
        draw.text((int(left + g * group_w + group_w / 2 - w / 2), bottom + 6), text, fill=INK, font=fnt)
    return img
