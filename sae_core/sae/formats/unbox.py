"""sdxl-unbox (openai-style TopK) folders: config.json + state_dict.pth (+ mean.pt, std.pt).

The SDXL layout is ``<hookpoint>_k10_hidden5120_auxk256_bs4096_lr0.0001/final/``; these SAEs encode the block
*update* (output - input) of SDXL Turbo. The authors' Flux SAE (``antoniomari/SAE_flux_18``) has the same files at
its repo root, whose name says nothing of the block: the table of known checkpoints (:mod:`..known`) gives it.
Concept Steerers (``auxk_coef`` in the config) and Interpret-then-Deactivate (a ``stats_last_nonzero`` buffer in the
state dict) save text-encoder SAEs in this layout; those encode the layer's output.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...blocks.families import text_encoder_of
from ...blocks.names import diffusers_name, hookpoint_of
from ...errors import SAEFormatError
from ..model import SparseAutoencoder
from .base import build_sae
from .common import check_k, config_int, read_json, read_torch_pickle

NAME = "sdxl-unbox"
CONFIG = "config.json"
WEIGHTS = "state_dict.pth"
UNET_FAMILY = "sdxl"  # a U-Net block the width does not decide: the unbox code targets SDXL Turbo
_RUN_NAME = re.compile(r"^(?P<hook>.+?)_k\d+_hidden\d+")


def matches(path: Path) -> bool:
    """A config.json with the openai SAE fields and a state_dict.pth beside it."""
    cfg = path / CONFIG
    if not cfg.is_file():
        return False
    try:
        data = read_json(cfg)
    except SAEFormatError:
        return (path / WEIGHTS).is_file()
    return "n_dirs_local" in data and "d_model" in data


def hookpoint(path: Path) -> str | None:
    """From the run folder's name (``<hookpoint>_k10_hidden5120_...``, this folder or its parent)."""
    for name in (path.name, path.parent.name):
        m = _RUN_NAME.match(name)
        if m and diffusers_name(m.group("hook")):
            return hookpoint_of(diffusers_name(m.group("hook")))
    return None


def _stat(folder: Path, name: str, n_latents: int) -> torch.Tensor | None:
    path = folder / name
    if not path.is_file():
        return None
    value = read_torch_pickle(path)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n_latents,):
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise SAEFormatError(path, "feature statistic has the wrong shape", found=str(found),
                             expected=f"({n_latents},)")
    return value.float()


def load(path: Path) -> SparseAutoencoder:
    cfg_path = path / CONFIG
    cfg = read_json(cfg_path)
    n = config_int(cfg, "n_dirs_local", cfg_path, minimum=1)
    d = config_int(cfg, "d_model", cfg_path, minimum=1)
    k = config_int(cfg, "k", cfg_path, minimum=1)
    check_k(k, n, cfg_path)
    weights_path = path / WEIGHTS
    blob = read_torch_pickle(weights_path)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise SAEFormatError(weights_path, "does not hold a state dict", found=type(blob).__name__,
                             expected="{'state_dict': {...}} or a plain state dict")
    hook = hookpoint(path)
    return build_sae(
        weights_path, state,
        {"W_enc": "encoder.weight", "W_dec": "decoder.weight", "b_enc": "latent_bias", "b_dec": "pre_bias"},
        d, n, k, transposed=("W_dec",),
        stats={"mean": _stat(path, "mean.pt", n), "std": _stat(path, "std.pt", n)},
        hookpoint=hook, input_kind="output" if text_encoder_of(hook) else "diff",  # text SAEs: the layer output
        source_format=NAME, name=path.parent.name if path.name == "final" else path.name,
    )
