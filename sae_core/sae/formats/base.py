"""What every checkpoint format provides, and the one constructor that turns read weights into an SAE.

A format is a module with ``NAME`` and three functions: ``matches(path)`` (is the SAE stored exactly at
``path``, a file or a folder, in this format? decided by content, not by names), ``hookpoint(path)`` (the block
it was trained on, cheaply, for listings) and ``load(path)``. ``load`` reads its config and tensors and hands them
to :func:`build_sae`, which checks shapes and finiteness and fills the one SparseAutoencoder class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ...errors import SAEFormatError
from ..model import SparseAutoencoder
from .common import require_finite, require_tensor


class CheckpointFormat(Protocol):
    NAME: str

    def matches(self, path: Path) -> bool: ...

    def hookpoint(self, path: Path) -> str | None: ...

    def load(self, path: Path) -> SparseAutoencoder: ...


def build_sae(path: Path, tensors: dict, names: dict[str, str], d_in: int, n_latents: int, k: int | None, *,
              transposed: tuple[str, ...] = (), stats: dict[str, torch.Tensor | None] | None = None,
              skip: torch.Tensor | None = None, **settings) -> SparseAutoencoder:
    """An SAE from a checkpoint's ``tensors``: ``names`` maps each of ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``
    (and ``threshold`` for JumpReLU) to its name in the file; names in ``transposed`` are stored (d_in, n) there.
    ``skip`` is a skip connection's (d_in, d_in) matrix, if the SAE has one. ``settings`` are the
    SparseAutoencoder keyword arguments (activation, hookpoint, input_kind...)."""
    shapes = {"W_enc": (n_latents, d_in), "b_enc": (n_latents,), "W_dec": (n_latents, d_in), "b_dec": (d_in,),
              "threshold": (n_latents,)}
    weights = {}
    for ours, theirs in names.items():
        shape = shapes[ours][::-1] if ours in transposed else shapes[ours]
        tensor = require_tensor(tensors, theirs, shape, path)
        weights[ours] = tensor.t().contiguous() if ours in transposed else tensor
    if skip is not None:
        weights["W_skip"] = require_tensor({"W_skip": skip}, "W_skip", (d_in, d_in), path)
    require_finite(weights, path)
    sae = SparseAutoencoder(d_in, n_latents, k, **settings)
    with torch.no_grad():
        for key, value in weights.items():
            if key == "W_skip":
                sae.W_skip = value.clone()
            else:
                getattr(sae, key).copy_(value)
    stats = stats or {}
    sae.set_feature_stats(stats.get("mean"), stats.get("std"), stats.get("firing_rate"))
    return sae


@torch.no_grad()
def fold_decoder_norms(sae: SparseAutoencoder, path: Path, why: str) -> None:
    """Latents scaled by their decoder row's norm (and divided by it again to decode) are the same function with
    unit-norm rows: the norms fold into the encoder. ``why`` names the setting that asks for it, for the error."""
    norms = sae.W_dec.norm(dim=-1)
    if not bool((norms > 0).all()):
        raise SAEFormatError(path, f"has a zero decoder direction, which {why} divides by",
                             expected="no all-zero decoder direction")
    sae.W_enc.mul_(norms[:, None])
    sae.b_enc.mul_(norms)
    sae.W_dec.div_(norms[:, None])
