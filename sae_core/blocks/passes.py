"""The conditioning passes of a sampler call, and which of them an edit or a reader uses.

A sampler calls a block with a batch made of *chunks*, one per pass (positive 0, negative 1, in any order and
any number: ComfyUI's ``cond_or_uncond``), stacked along the batch axis. Every node that picks passes offers a
subset of the one table below, so a name means the same thing everywhere.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import SAEInputError
from ..validate import check_choice

if TYPE_CHECKING:
    from .context import CallContext

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


class PassRows:
    """The rows of a block call that a patch uses, from its choice of passes: host facts (no tensor is read),
    cached per call shape, so every patch picks its rows the same way and the steady state reads nothing back."""

    def __init__(self, passes: str, choices=tuple(SELECTIONS)):
        self.passes = check_choice("passes", passes, choices)
        self._signs: dict[tuple, Tensor] = {}
        self._indices: dict[tuple, list[int]] = {}
        self._on_device: dict[tuple, tuple[Tensor, bool]] = {}

    def host_signs(self, ctx: CallContext, n_rows: int) -> Tensor:
        """(N,) +1 / -1 / 0 on the CPU."""
        key = (ctx.chunk_kinds, n_rows)
        if key not in self._signs:
            self._signs[key] = row_signs(ctx.chunk_kinds, n_rows, self.passes)
        return self._signs[key]

    def signs(self, ctx: CallContext, n_rows: int, like: Tensor) -> tuple[Tensor, bool]:
        """(N,) signs on ``like``'s device and dtype, and whether any row is used (decided when first cached; under
        torch.compile, where a value read would break the graph, True)."""
        key = (ctx.chunk_kinds, n_rows, like.device, like.dtype)
        hit = self._on_device.get(key)
        if hit is None:
            host = self.host_signs(ctx, n_rows)
            active = True if torch.compiler.is_compiling() else bool(host.any())
            hit = self._on_device[key] = (host.to(like.device, like.dtype), active)
        return hit

    def indices(self, ctx: CallContext, n_rows: int) -> list[int]:
        """The used rows, in batch order."""
        key = (ctx.chunk_kinds, n_rows)
        if key not in self._indices:
            self._indices[key] = [r for r, s in enumerate(self.host_signs(ctx, n_rows).tolist()) if s]
        return self._indices[key]
