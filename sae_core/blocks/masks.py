"""Where an edit acts: a user mask of any size pooled to the block's position grid, times the sign of each row's
pass."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SAEInputError
from .context import CallContext
from .passes import PassRows


def check_mask(mask: Tensor | None) -> Tensor | None:
    """(H, W) or (M, H, W) with finite values; refused here, whatever the pass order or cfg it meets later."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape:
        raise SAEInputError(f"mask must have shape (H, W) or (batch, H, W), got {tuple(mask.shape)}")
    if not bool(torch.isfinite(mask).all()):
        raise SAEInputError("mask holds NaN or infinite values")
    return mask


def pool_mask(mask: Tensor | None, n_rows: int, grid: tuple[int, int], chunks: int = 1) -> Tensor:
    """A mask of any size, (H, W) or (M, H, W), area-pooled to the block grid for every batch row.

    The batch is ``chunks`` pass chunks of ``n_rows / chunks`` images each. M == 1 applies to every row;
    otherwise M must equal the number of images, and image i of every chunk uses mask i. Returns
    (n_rows, h, w) in [0, 1] (ones when there is no mask).
    """
    if mask is None:
        return torch.ones(n_rows, *grid)
    mask = check_mask(mask)
    pooled = F.interpolate(mask[:, None].float(), size=grid, mode="area")[:, 0]
    if pooled.shape[0] == 1:
        return pooled.expand(n_rows, *grid)
    images = n_rows // max(chunks, 1)
    if pooled.shape[0] != images:
        raise SAEInputError(f"mask batch {pooled.shape[0]} does not match the latent batch of {images} image(s) "
                            f"(at any cfg); use one mask, or one per image")
    return pooled.repeat(n_rows // pooled.shape[0], 1, 1)


class EditWeights:
    """Per-call row x position weights (pass sign x pooled mask), cached by grid, batch and passes, with whether any
    is non-zero (decided on the host when the weights are first built, so the steady state reads nothing back from
    the device)."""

    def __init__(self, mask: Tensor | None, passes: str):
        self.mask = None if mask is None else check_mask(mask.detach()).float().cpu()
        self.rows = PassRows(passes)
        self._cache: dict[tuple, tuple[Tensor, bool]] = {}

    def weights(self, ctx: CallContext, n_rows: int, grid: tuple[int, int], like: Tensor) -> tuple[Tensor, bool]:
        key = (ctx.chunk_kinds, n_rows, grid, like.device, like.dtype)
        hit = self._cache.get(key)
        if hit is None:
            signs = self.rows.host_signs(ctx, n_rows)
            pooled = pool_mask(self.mask, n_rows, grid, max(len(ctx.chunk_kinds), 1))
            host = pooled * signs[:, None, None]
            # under torch.compile a value read would break the graph: edit, with zero weights where none apply
            active = True if torch.compiler.is_compiling() else bool(host.any())
            hit = (host.to(like.device, like.dtype), active)
            self._cache[key] = hit
        return hit
