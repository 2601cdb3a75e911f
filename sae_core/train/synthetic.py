"""Planted-dictionary data: rows built from a known set of unit directions with sparse positive codes and
noise, so a trainer can be checked (and benchmarked) by how well it recovers the directions."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


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
    picks = torch.rand(rows, n_features, generator=g).argsort(dim=1)[:, :active]
    magnitudes = 0.5 + torch.rand(rows, active, generator=g)
    x = torch.zeros(rows, d_in)
    for j in range(active):
        x += magnitudes[:, j:j + 1] * directions[picks[:, j]]
    x += noise * torch.randn(rows, d_in, generator=g) + centre
    return Planted(x, directions)


def recovery(W_dec: Tensor, directions: Tensor) -> float:
    """Mean over true directions of the best cosine similarity with any learned decoder row."""
    learned = W_dec.detach().float().cpu()
    learned = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((directions @ learned.T).max(dim=1).values.mean())
