"""Sparse autoencoders for diffusion models (U-Nets and diffusion transformers), in pure torch (no ComfyUI
import anywhere in here).

    from sae_core import load_sae
    sae = load_sae("models/sae/unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001")
    code = sae.encode_topk(x)          # x: (..., d_in) -> values, indices (..., k)
"""
from .errors import SAEError, SAEFormatError, SAEHubError, SAEInputError
from .sae.formats import FoundSAE, detect, find_saes, load_sae, load_sae_from_hub
from .sae.formats.native import save as save_sae
from .sae.hub import download_sae
from .sae.model import SparseAutoencoder, SparseCode

__version__ = "0.1.0"

__all__ = [
    "SAEError", "SAEFormatError", "SAEHubError", "SAEInputError", "FoundSAE", "SparseAutoencoder",
    "SparseCode", "detect", "download_sae", "find_saes", "load_sae", "load_sae_from_hub", "save_sae",
]
