"""SAELens folders: cfg.json + sae_weights.safetensors (``W_enc`` stored as (d_in, d_sae)).

Supported architectures: standard (ReLU), topk, jumprelu. SAELens may skip subtracting ``b_dec``
before encoding (``apply_b_dec_to_input: false``); that is folded into the encoder bias on load so
the one SAE formula still holds.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..blocks import infer_model_family
from ..errors import SAEFormatError
from ..model import SparseAutoencoder
from .common import (check_k, config_int, hookpoint_and_kind, read_json, read_safetensors, require_finite,
                     require_tensor, safetensors_keys)

NAME = "saelens"
CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
_ARCHITECTURES = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def matches(folder: Path) -> bool:
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        return False
    keys = safetensors_keys(folder / WEIGHTS)
    return keys is None or {"W_enc", "W_dec"} <= keys


def _architecture(cfg: dict, path: Path) -> str:
    arch = str(cfg.get("architecture", "standard")).lower()
    if arch == "standard" and str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))).lower() == "topk":
        arch = "topk"
    if arch not in _ARCHITECTURES:
        raise SAEFormatError(path, "unsupported SAELens architecture", found=repr(arch),
                             expected="one of " + ", ".join(sorted(_ARCHITECTURES)))
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise SAEFormatError(path, "activation normalisation is not supported", found=repr(norm), expected="'none'")
    return _ARCHITECTURES[arch]


def load(folder: Path) -> SparseAutoencoder:
    cfg_path = folder / CONFIG
    cfg = read_json(cfg_path)
    d = config_int(cfg, "d_in", cfg_path, minimum=1)
    n = config_int(cfg, "d_sae", cfg_path, minimum=1)
    activation = _architecture(cfg, cfg_path)
    k = None
    if activation == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        k = config_int({"k": cfg.get("k", kwargs.get("k"))}, "k", cfg_path, minimum=1)
        check_k(k, n, cfg_path)
    weights_path = folder / WEIGHTS
    tensors, _ = read_safetensors(weights_path)
    weights = {
        "W_enc": require_tensor(tensors, "W_enc", (d, n), weights_path).t().contiguous(),
        "b_enc": require_tensor(tensors, "b_enc", (n,), weights_path),
        "W_dec": require_tensor(tensors, "W_dec", (n, d), weights_path),
        "b_dec": require_tensor(tensors, "b_dec", (d,), weights_path),
    }
    if activation == "jumprelu":
        if "threshold" in tensors:
            weights["threshold"] = require_tensor(tensors, "threshold", (n,), weights_path)
        else:
            weights["threshold"] = require_tensor(tensors, "log_threshold", (n,), weights_path).exp()
    require_finite(weights, weights_path)
    if not cfg.get("apply_b_dec_to_input", True):
        weights["b_enc"] = weights["b_enc"] + weights["W_enc"] @ weights["b_dec"]
    hookpoint, input_kind = hookpoint_and_kind(cfg, "hook_name", folder, cfg_path)
    sae = SparseAutoencoder(d, n, k, activation=activation, hookpoint=hookpoint, input_kind=input_kind,
                            model_family=infer_model_family(hookpoint, d), source_format=NAME, name=folder.name)
    with torch.no_grad():
        for key, value in weights.items():
            getattr(sae, key).copy_(value)
    return sae
