"""Planted-dictionary data: rows built from a known set of unit directions with sparse positive codes and
noise, so a trainer can be checked (and benchmarked) by how well it recovers the directions."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ROWS = 1 << 16


class Planted(NamedTuple):
    x: Tensor           # (rows, d_in)
    directions: Tensor  # (n_features, d_in), unit norm


def planted_dictionary(rows: int, d_in: int, n_features: int, active: int, noise: float = 0.01, offset: float = 1.0,
                       seed: int = 0) -> Planted:
    """Each row sums ``active`` random features (magnitudes uniform in [0.5, 1.5)) plus Gaussian noise of
    std ``noise`` per coordinate and a constant offset vector of norm ``offset`` (what b_dec should learn)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    centre = torch.randn(d_in, generator=g)
    centre *= offset / centre.norm()
    x = torch.empty(rows, d_in)
    for start in range(0, rows, CHUNK_ROWS):  # chunks bound the (rows x features) draw behind the picks
        n = min(CHUNK_ROWS, rows - start)
        picks = distinct_picks(n, n_features, active, g)
        magnitudes = 0.5 + torch.rand(n, active, generator=g)
        chunk = F.embedding_bag(picks, directions, mode="sum", per_sample_weights=magnitudes)
        x[start:start + n] = chunk.add_(centre).add_(torch.randn(n, d_in, generator=g), alpha=noise)
    return Planted(x, directions)


def distinct_picks(rows: int, n_features: int, active: int, g: torch.Generator) -> Tensor:
    """``active`` distinct feature ids per row, uniformly: draw with replacement, then redraw repeats until
    none are left (rejection sampling; cheap while ``active`` is much smaller than ``n_features``)."""
    if active > n_features:
        raise ValueError(f"planted_dictionary: active={active} exceeds n_features={n_features}")
    picks = torch.randint(n_features, (rows, active), generator=g)
    while True:
        ordered, order = picks.sort(dim=1)
        repeated = torch.zeros_like(picks, dtype=torch.bool)
        repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        if not repeated.any():
            return picks
        rows_idx, cols_idx = repeated.nonzero(as_tuple=True)
        slots = order[rows_idx, cols_idx]
        picks[rows_idx, slots] = torch.randint(n_features, (rows_idx.shape[0],), generator=g)


def recovery(W_dec: Tensor, directions: Tensor) -> float:
    """Mean over true directions of the best cosine similarity with any learned decoder row."""
    learned = W_dec.detach().float().cpu()
    learned = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((directions @ learned.T).max(dim=1).values.mean())
