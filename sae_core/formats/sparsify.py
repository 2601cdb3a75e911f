"""EleutherAI sparsify / SAeUron folders: cfg.json + sae.safetensors, one folder per hookpoint.

SAeUron's SAEs encode the block *output*; a cfg field ``input_kind`` (our extension) overrides that.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..blocks import infer_model_family
from ..errors import SAEFormatError
from ..model import SparseAutoencoder
from .common import (check_k, config_int, hookpoint_and_kind, read_json, read_safetensors, require_finite,
                     require_tensor, safetensors_keys)

NAME = "sparsify"
CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"


def matches(folder: Path) -> bool:
    """cfg.json beside a safetensors file with sparsify's tensor names (encoder.weight, W_dec)."""
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        return False
    keys = safetensors_keys(folder / WEIGHTS)
    return keys is None or {"encoder.weight", "W_dec"} <= keys


def load(folder: Path) -> SparseAutoencoder:
    cfg_path = folder / CONFIG
    cfg = read_json(cfg_path)
    d = config_int(cfg, "d_in", cfg_path, minimum=1)
    n = config_int(cfg, "num_latents", cfg_path, default=0) or d * config_int(
        cfg, "expansion_factor", cfg_path, minimum=1)
    k = config_int(cfg, "k", cfg_path, minimum=1)
    check_k(k, n, cfg_path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(cfg_path, "unsupported sparsify activation", found=repr(activation), expected="'topk'")
    if cfg.get("transcode"):
        raise SAEFormatError(cfg_path, "is a transcoder (maps one activation to another), not an autoencoder",
                             found="transcode: true", expected="transcode: false")
    weights_path = folder / WEIGHTS
    tensors, _ = read_safetensors(weights_path)
    if "W_skip" in tensors:
        raise SAEFormatError(weights_path, "has a skip connection (W_skip), which edits cannot separate from features",
                             expected="an SAE without W_skip")
    weights = {
        "W_enc": require_tensor(tensors, "encoder.weight", (n, d), weights_path),
        "b_enc": require_tensor(tensors, "encoder.bias", (n,), weights_path),
        "W_dec": require_tensor(tensors, "W_dec", (n, d), weights_path),
        "b_dec": require_tensor(tensors, "b_dec", (d,), weights_path),
    }
    require_finite(weights, weights_path)
    hookpoint, input_kind = hookpoint_and_kind(cfg, "hookpoint", folder, cfg_path)
    sae = SparseAutoencoder(
        d, n, k, input_norm=bool(cfg.get("input_unit_norm", False)), hookpoint=hookpoint, input_kind=input_kind,
        model_family=infer_model_family(hookpoint, d), source_format=NAME, name=folder.name,
    )
    with torch.no_grad():
        for key, value in weights.items():
            getattr(sae, key).copy_(value)
    return sae
