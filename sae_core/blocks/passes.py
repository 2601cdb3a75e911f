"""The conditioning passes of a sampler call, and which of them an edit or a reader uses.

A sampler calls a block with a batch made of *chunks*, one per pass (positive 0, negative 1, in any order and
any number: ComfyUI's ``cond_or_uncond``), stacked along the batch axis. Every node that picks passes offers a
subset of the one table below, so a name means the same thing everywhere.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SAEInputError
from ..validate import check_choice

POSITIVE, NEGATIVE = 0, 1
PASS_NAMES = {"positive": POSITIVE, "negative": NEGATIVE}  # one pass, for the readers
KIND_NAMES = {kind: name for name, kind in PASS_NAMES.items()}

# selection -> sign of the rows of each pass (0: untouched; -1: the edit is negated there, as the paper does on
# the unconditional half at cfg > 1)
SELECTIONS: dict[str, dict[int, float]] = {
    "positive": {POSITIVE: 1.0, NEGATIVE: 0.0},
    "negative": {POSITIVE: 0.0, NEGATIVE: 1.0},
    "both": {POSITIVE: 1.0, NEGATIVE: 1.0},
    "positive, negated on negative": {POSITIVE: 1.0, NEGATIVE: -1.0},
}
STEER_PASSES = ("positive", "negative", "both", "positive, negated on negative")
UNLEARN_PASSES = ("both", "positive", "negative")  # the paper edits both halves of the CFG batch
STORE_PASSES = ("positive", "both")  # what collection stores (SAeUron: the conditional pass only)


def row_kind_list(chunk_kinds: tuple[int, ...], n_rows: int) -> list[int]:
    """The pass of every batch row, from the pass of every chunk (host facts: no tensor is read)."""
    kinds = chunk_kinds or (POSITIVE,)
    if n_rows % len(kinds):
        raise SAEInputError(f"batch of {n_rows} rows cannot be split into {len(kinds)} passes {list(kinds)}")
    per_chunk = n_rows // len(kinds)
    return [int(kind) for kind in kinds for _ in range(per_chunk)]


def row_signs(chunk_kinds: tuple[int, ...], n_rows: int, passes: str) -> Tensor:
    """+1 / -1 / 0 per batch row: which rows an edit touches, and with which sign."""
    table = SELECTIONS[check_choice("passes", passes, SELECTIONS)]
    return torch.tensor([table.get(kind, 0.0) for kind in row_kind_list(chunk_kinds, n_rows)])
