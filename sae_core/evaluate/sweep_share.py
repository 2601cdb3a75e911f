"""An unlearning sweep split over processes (``python -m headless sweep`` under torchrun): each rank ran its share
of the runs (the un-edited model, each concept under each setting) with the same batches and seeds; rank 0 puts
the parts together into the one-process grid picture and result. Runs are independent, so nothing is averaged:
every image, prediction and feature row comes from the one rank that made it."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..errors import SAEInputError
from .sweep import GridLayout, Run, SweepResult


@dataclass
class SweepPart:
    """What one rank made: its runs, its grid picture ((..., H, W, 3): only its runs' cells drawn), its result."""

    runs: list[Run]
    grid: Tensor
    result: SweepResult


def run_boxes(layout: GridLayout, run: Run) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) of every cell ``run`` draws (the un-edited images appear in every concept's
    panels)."""
    concepts = range(len(layout.plan.concepts)) if run.is_base else [run.concept]
    return [layout.box(c, i, run.setting) for c in concepts for i in range(len(layout.plan.samples))]


def _row_key(row: dict) -> tuple:
    return row["concept"], row["percentile"], row["multiplier"]


def merge_sweep_parts(layout: GridLayout, parts: Sequence[SweepPart]) -> tuple[Tensor, SweepResult]:
    """The grid and result of the whole sweep from every rank's part (rank 0's first: its labels and layout)."""
    plan = layout.plan
    owner: dict[Run, SweepPart] = {}
    for part in parts:
        for run in part.runs:
            if run in owner:
                raise SAEInputError(f"two ranks ran the same sweep run ({run}); every rank must take its own share")
            owner[run] = part
    missing = [run for run in plan.runs() if run not in owner]
    if missing:
        raise SAEInputError(f"{len(missing)} runs of the sweep were run by no rank (first: {missing[0]})")
    grid = parts[0].grid.clone()
    for run, part in owner.items():
        for left, top, width, height in run_boxes(layout, run):
            grid[..., top:top + height, left:left + width, :] = part.grid[..., top:top + height, left:left + width, :]
    edited = {_row_key(row): row["edited_positions"] for part in parts for row in part.result.feature_rows
              if row["edited_positions"] is not None}
    first = parts[0].result
    result = SweepResult(plan, first.class_names, first.cross_class_names,
                         {run: owner[run].result.records[run] for run in plan.runs()},
                         feature_rows=[{**row, "edited_positions": edited.get(_row_key(row))}
                                       for row in first.feature_rows],
                         fid_source=first.fid_source)
    return grid, result
