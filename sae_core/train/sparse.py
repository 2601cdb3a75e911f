"""The sparse pieces of a TopK SAE step, forward and backward, without dense (rows x latents) gradients.

A code is a list of entries (row, latent, value), sorted by row. Decoding is a weighted
``embedding_bag`` over decoder rows. The gradients of both weight matrices are sums over entries of
``weight_e * dense[row_e]`` into ``latent_e``: after sorting the entries by latent, that is again one
``embedding_bag`` (bags = latents), so the backward costs O(entries x d_in) instead of the
O(rows x latents x d_in) a dense autograd backward through ``topk`` would spend.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

DOT_CHUNK = 1 << 14  # entries per gather in entry_dots' fallback (keeps the gathered rows in cache)


class Code(NamedTuple):
    rows: Tensor     # (nnz,) int64, non-decreasing
    cols: Tensor     # (nnz,) int64 latent index
    vals: Tensor     # (nnz,) float32, >= 0 (ReLU'd)
    offsets: Tensor  # (n_rows,) first entry of each row
    per_row: int | None = None  # k when every row has exactly k entries (TopK, AuxK)

    @property
    def n_rows(self) -> int:
        return self.offsets.shape[0]


def _row_offsets(counts: Tensor) -> Tensor:
    offsets = torch.zeros_like(counts)
    offsets[1:] = counts.cumsum(0)[:-1]
    return offsets


def topk_code(pre: Tensor, k: int) -> Code:
    """Each row keeps its k largest pre-activations (ReLU'd)."""
    vals, cols = pre.topk(k, dim=-1, sorted=False)
    n = pre.shape[0]
    rows = torch.arange(n, device=pre.device).repeat_interleave(k)
    return Code(rows, cols.reshape(-1), vals.reshape(-1).float().relu(), torch.arange(n, device=pre.device) * k, k)


def threshold_code(pre: Tensor, threshold: Tensor) -> Code:
    """Every positive pre-activation at or above ``threshold`` (BatchTopK's batch-wide cut)."""
    rows, cols = ((pre >= threshold) & (pre > 0)).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=pre.shape[0])
    return Code(rows, cols, pre[rows, cols].float(), _row_offsets(counts))


def dead_topk_code(pre: Tensor, dead: Tensor, k: int) -> Code:
    """Each row's k largest pre-activations among the ``dead`` latents (AuxK)."""
    vals, local = pre.index_select(1, dead).topk(k, dim=-1, sorted=False)
    n = pre.shape[0]
    rows = torch.arange(n, device=pre.device).repeat_interleave(k)
    return Code(rows, dead[local.reshape(-1)], vals.reshape(-1).float().relu(),
                torch.arange(n, device=pre.device) * k, k)


def decode(code: Code, W_dec: Tensor) -> Tensor:
    """``sum_e vals_e W_dec[cols_e]`` per row (no bias)."""
    return F.embedding_bag(code.cols, W_dec, code.offsets, mode="sum", per_sample_weights=code.vals)


def entry_dots(W: Tensor, code: Code, dense: Tensor) -> Tensor:
    """``<W[cols_e], dense[rows_e]>`` for every entry: the gradient of each code value.

    This is exactly what autograd computes for ``embedding_bag``'s per-sample weights; its kernel reads each
    row in place (about 10x faster on CPU than gathering the rows first), so it is called directly, with a
    gather-based fallback should a torch build lack it.
    """
    try:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            dense, W, code.cols, code.offsets, code.rows, 0, -1)
    except (AttributeError, RuntimeError):  # pragma: no cover - every torch >= 1.3 has the op
        pass
    out = torch.empty(code.cols.shape[0], dtype=dense.dtype, device=dense.device)
    for start in range(0, code.cols.shape[0], DOT_CHUNK):
        stop = start + DOT_CHUNK
        out[start:stop] = (W[code.cols[start:stop]] * dense[code.rows[start:stop]]).sum(-1)
    return out


class LatentOrder(NamedTuple):
    """Entries sorted by latent, with each latent's first entry: the bags of a latent-wise embedding_bag."""

    order: Tensor
    offsets: Tensor
    counts: Tensor


def latent_order(cols: Tensor, n_latents: int) -> LatentOrder:
    order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=n_latents)
    return LatentOrder(order, _row_offsets(counts), counts)


def scatter_to_latents(by_latent: LatentOrder, rows: Tensor, weights: Tensor, dense: Tensor) -> Tensor:
    """``out[l] = sum over entries e of latent l of weights_e * dense[rows_e]``, shape (n_latents, d)."""
    return F.embedding_bag(rows[by_latent.order], dense, by_latent.offsets, mode="sum",
                           per_sample_weights=weights[by_latent.order])
