"""The small SAEs the tests build: one factory, so every test module makes them the same way."""
from __future__ import annotations

import torch


def tiny_sae(d_in: int = 8, n_latents: int = 16, k: int | None = 2, *, hookpoint: str = "unet.mid_block.attentions.0",
             input_kind: str = "diff", seed: int = 0, name: str = "tiny", encoder_gain: float = 1.0,
             mean: float | str | torch.Tensor | None = None, sae_class=None, **settings):
    """An SAE with seeded weights (``reset_parameters``). ``encoder_gain`` scales the encoder so features fire
    more strongly; ``mean`` sets each feature's mean activation (a number, ``"random"``: seeded values in [1, 2),
    or a tensor). ``sae_class``: the SparseAutoencoder to build (the ComfyUI tests pass the pack's own copy)."""
    if sae_class is None:
        from sae_core import SparseAutoencoder as sae_class
    sae = sae_class(d_in, n_latents, k, hookpoint=hookpoint, input_kind=input_kind, name=name, **settings)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    if encoder_gain != 1.0:
        with torch.no_grad():
            sae.W_enc.mul_(encoder_gain)
    if isinstance(mean, str):
        mean = torch.rand(n_latents, generator=torch.Generator().manual_seed(seed)) + 1.0
    elif isinstance(mean, (int, float)):
        mean = torch.full((n_latents,), float(mean))
    if mean is not None:
        sae.set_feature_stats(mean=mean)
    return sae
