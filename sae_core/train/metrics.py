"""Training metrics per interval: averaged over the interval's steps, written as JSONL (appended as training
goes) and CSV, and drawn as a PNG curve (FVU and dead fraction; L0 and ||x_hat|| / ||x|| in the title)."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from PIL import Image

from ..files import atomic_write, atomic_write_text
from ..render import line_chart

AVERAGED = ("fvu", "l0", "norm_ratio", "auxk_loss", "grad_norm")
COLUMNS = ("step", "tokens", "fvu", "explained_variance", "l0", "dead_fraction", "norm_ratio", "auxk_loss",
           "grad_norm", "lr", "tokens_per_s")


class IntervalMeter:
    """Accumulates step metrics and turns them into one history row per interval."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = {key: 0.0 for key in AVERAGED}
        self.count = 0
        self.rows = 0
        self.started = time.perf_counter()

    def add(self, metrics: dict, rows: int) -> None:
        for key in AVERAGED:
            self.sums[key] += metrics[key]
        self.count += 1
        self.rows += rows
        self.last = metrics

    def row(self, step: int, tokens: int) -> dict:
        n = max(self.count, 1)
        avg = {key: self.sums[key] / n for key in AVERAGED}
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        row = {"step": step, "tokens": tokens, **avg, "explained_variance": 1.0 - avg["fvu"],
               "dead_fraction": self.last["dead_fraction"], "lr": self.last["lr"], "tokens_per_s": self.rows / elapsed}
        self.reset()
        return {key: row[key] for key in COLUMNS}


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def write_jsonl(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def write_csv(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def loss_curve(history: list[dict], title: str = "SAE training") -> Image.Image:
    """FVU and dead fraction against the step; the title gives the last L0 and ||x_hat||/||x||."""
    steps = [row["step"] for row in history] or [0]
    series = {
        "FVU": [row["fvu"] for row in history] or [0.0],
        "dead fraction": [row["dead_fraction"] for row in history] or [0.0],
    }
    if history:
        last = history[-1]
        title = (f"{title}: FVU {last['fvu']:.3f}, L0 {last['l0']:.1f}, dead {100 * last['dead_fraction']:.1f}%, "
                 f"|x_hat|/|x| {last['norm_ratio']:.2f}")
    return line_chart(series, title=title, x_label="step", x_values=steps)


def save_png(path: Path, image: Image.Image) -> None:
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG")
