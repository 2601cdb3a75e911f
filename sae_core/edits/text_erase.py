"""Interpret-then-Deactivate (ItD): erase a concept in the text encoder by deactivating its specific SAE features.

Selection (contrast prompts): each prompt's layer output is encoded, each feature's peak activation over the
prompt's tokens (all but the first, the start token) ranks the features, and the top ``top_n`` of every prompt are
collected; the features of the target prompts that are in no remaining prompt's top are the concept's.

Deactivation, per encoded row: the concept's features (at every token but the first) are multiplied by
``multiplier`` (ItD: -8 for celebrities, -6 for styles) and the row is replaced by the SAE's reconstruction from
that code, but only when this changes it by at least ``threshold`` (mean squared difference to the layer output);
the threshold is 0.99 x the smallest such change over the target prompts, so every target prompt is erased and a
prompt that barely uses the concept's features is left exactly as it was.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..blocks.context import CallContext
from ..blocks.patch import BlockPatch, BlockView, for_sae
from ..errors import SAEInputError
from ..sae.model import SparseAutoencoder, SparseCode

THRESHOLD_MARGIN = 0.99  # ItD: (1 - 0.01) x the smallest change over the target prompts


def peak_features(sae: SparseAutoencoder, activations: Tensor, top_n: int) -> set[int]:
    """The ``top_n`` features with the highest peak activation over the tokens (T, C) after the first."""
    code = sae.encode_topk(for_sae(activations[1:].detach()), None if sae.k else min(top_n, sae.n_latents))
    peak: dict[int, float] = {}
    for f, v in zip(code.indices.reshape(-1).tolist(), code.values.reshape(-1).tolist()):
        if v > 0 and v > peak.get(f, 0.0):
            peak[f] = v
    return set(sorted(peak, key=lambda f: (-peak[f], f))[:top_n])


@torch.no_grad()
def concept_features(sae: SparseAutoencoder, target: list[Tensor], remain: list[Tensor], top_n: int) -> list[int]:
    """The features in some target prompt's top ``top_n`` and in no remaining prompt's, sorted."""
    kept: set[int] = set()
    for acts in remain:
        kept |= peak_features(sae, acts, top_n)
    found: set[int] = set()
    for acts in target:
        found |= peak_features(sae, acts, top_n) - kept
    if not found:
        raise SAEInputError(f"every top-{top_n} feature of the target prompts also fires on the remaining prompts; "
                            f"use target prompts that differ more from them, fewer remaining prompts, or a larger "
                            f"top_n")
    return sorted(found)


class Deactivation:
    """The reconstruction of a layer output u (..., T, C) with the concept's features scaled, and the mean squared
    change it makes per row."""

    def __init__(self, sae: SparseAutoencoder, features: list[int], multiplier: float):
        self.sae = sae
        self.features = torch.tensor(features, dtype=torch.long)
        self.multiplier = float(multiplier)

    def reconstruction(self, u: Tensor) -> Tensor:
        code = self.sae.encode_topk(u)
        hit = (code.indices[..., None] == self.features.to(u.device)).any(-1)
        hit[..., 0, :] = False  # the first token (the start token) keeps its code
        values = torch.where(hit, code.values * self.multiplier, code.values)
        return self.sae.decode_sparse(SparseCode(values, code.indices))

    def change(self, u: Tensor, recon: Tensor) -> Tensor:
        """(rows,): the mean over tokens and width of (recon - u)^2 (u is (rows, T, C) or (rows, 1, T, C))."""
        return (recon - u).pow(2).flatten(1).mean(1)


@torch.no_grad()
def erase_threshold(deactivation: Deactivation, target: list[Tensor]) -> float:
    """0.99 x the smallest change the deactivation makes over the target prompts' layer outputs."""
    changes = [float(deactivation.change(for_sae(a)[None], deactivation.reconstruction(for_sae(a)[None]))[0])
               for a in target]
    return THRESHOLD_MARGIN * min(changes)


class ErasePatch(BlockPatch):
    """ItD's deactivation on every encoded row whose change reaches the threshold; other rows are untouched."""

    input_kind = "output"

    def __init__(self, deactivation: Deactivation, threshold: float):
        self.deactivation = deactivation
        self.threshold = float(threshold)

    def __call__(self, view: BlockView, ctx: CallContext) -> Tensor | None:
        u = view.sae_input(self.input_kind)[:, 0]  # (N, T, C)
        recon = self.deactivation.reconstruction(u)
        erased = self.deactivation.change(u, recon) >= self.threshold
        if not bool(erased.any()):  # a host read: text encoding runs once per prompt, not per sampling step
            return None
        return ((recon - u) * erased[:, None, None].to(u.dtype))[:, None]
