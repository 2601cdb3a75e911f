"""What an edit needs to know about one call of a transformer block, independent of ComfyUI.

A sampler calls a block with a batch made of *chunks* (one per conditioning pass: positive 0,
negative 1, in any order and any number) stacked along the batch axis. Edits pick rows by pass,
weight positions by a mask pooled to the block's grid, and run only inside a window of sigmas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .errors import SAEInputError

POSITIVE, NEGATIVE = 0, 1
PASSES = ("positive", "negative", "both", "positive, negated on negative")


@dataclass(frozen=True)
class CallContext:
    """Per-call facts: the pass of each chunk (``cond_or_uncond``), the current sigma and the schedule."""

    chunk_kinds: tuple[int, ...] = (POSITIVE,)
    sigma: float | None = None
    sample_sigmas: tuple[float, ...] | None = None  # the whole schedule, ending with the final sigma (often 0)

    @property
    def n_steps(self) -> int | None:
        return len(self.sample_sigmas) - 1 if self.sample_sigmas else None

    @property
    def step(self) -> int | None:
        """Index of the schedule entry nearest to the current sigma (the step being denoised)."""
        if self.sigma is None or not self.sample_sigmas:
            return None
        steps = self.sample_sigmas[:-1] or self.sample_sigmas
        return min(range(len(steps)), key=lambda i: abs(steps[i] - self.sigma))


@dataclass(frozen=True)
class StepWindow:
    """Active while ``sigma_end <= sigma <= sigma_start`` (ControlNet-style start/end percent)."""

    sigma_start: float = float("inf")
    sigma_end: float = 0.0

    def contains(self, sigma: float | None) -> bool:
        if sigma is None:
            return True
        return self.sigma_end <= sigma <= self.sigma_start


def row_signs(chunk_kinds: tuple[int, ...], n_rows: int, passes: str) -> Tensor:
    """+1 / -1 / 0 per batch row: which rows an edit touches, and with which sign."""
    if passes not in PASSES:
        raise SAEInputError(f"passes {passes!r} is not valid; valid: {', '.join(PASSES)}")
    kinds = chunk_kinds or (POSITIVE,)
    if n_rows % len(kinds):
        raise SAEInputError(f"batch of {n_rows} rows cannot be split into {len(kinds)} passes {list(kinds)}")
    per_chunk = n_rows // len(kinds)
    table = {
        "positive": {POSITIVE: 1.0, NEGATIVE: 0.0},
        "negative": {POSITIVE: 0.0, NEGATIVE: 1.0},
        "both": {POSITIVE: 1.0, NEGATIVE: 1.0},
        "positive, negated on negative": {POSITIVE: 1.0, NEGATIVE: -1.0},
    }[passes]
    signs = [table.get(kind, 0.0) for kind in kinds]
    return torch.tensor(signs).repeat_interleave(per_chunk)


def pool_mask(mask: Tensor | None, n_rows: int, grid: tuple[int, int]) -> Tensor:
    """A mask of any size, (H, W) or (M, H, W), area-pooled to the block grid for every batch row.

    M == 1 applies to every row; otherwise M must equal the batch size, and row r of each pass
    chunk uses mask r % M. Returns (n_rows, h, w) in [0, 1] (ones when there is no mask).
    """
    if mask is None:
        return torch.ones(n_rows, *grid)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise SAEInputError(f"mask must have shape (H, W) or (batch, H, W), got {tuple(mask.shape)}")
    pooled = F.interpolate(mask[:, None].float(), size=grid, mode="area")[:, 0]
    if pooled.shape[0] == 1:
        return pooled.expand(n_rows, *grid)
    if n_rows % pooled.shape[0]:
        raise SAEInputError(f"mask batch {pooled.shape[0]} does not match the latent batch; "
                            f"use one mask or one per image")
    return pooled.repeat(n_rows // pooled.shape[0], 1, 1)


def to_tokens(t: Tensor) -> Tensor:
    """(N, C, h, w) block activations -> (N, h, w, C) vectors for the SAE."""
    return rearrange(t, "n c h w -> n h w c")


def from_tokens(t: Tensor) -> Tensor:
    return rearrange(t, "n h w c -> n c h w")


def sae_input(x_in: Tensor, y_out: Tensor, input_kind: str | None) -> Tensor:
    """What the SAE encodes: the block update (``"diff"``) or the block output, as (N, h, w, C)."""
    if input_kind == "diff":
        return to_tokens(y_out - x_in)
    return to_tokens(y_out)


class WeightCache:
    """Per-call row x position weights (pass sign x pooled mask), cached by grid, batch and passes."""

    def __init__(self, mask: Tensor | None, passes: str):
        self.mask = None if mask is None else mask.detach().float().cpu()
        self.passes = passes
        self._cache: dict[tuple, Tensor] = {}

    def weights(self, ctx: CallContext, n_rows: int, grid: tuple[int, int], like: Tensor) -> Tensor:
        key = (ctx.chunk_kinds, n_rows, grid, like.device, like.dtype)
        hit = self._cache.get(key)
        if hit is None:
            signs = row_signs(ctx.chunk_kinds, n_rows, self.passes)
            hit = (pool_mask(self.mask, n_rows, grid) * signs[:, None, None]).to(like.device, like.dtype)
            self._cache[key] = hit
        return hit
