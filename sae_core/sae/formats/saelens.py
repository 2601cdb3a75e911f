"""SAELens folders: cfg.json + sae_weights.safetensors (``W_enc`` stored as (d_in, d_sae)).

Supported architectures: standard (ReLU), topk, jumprelu. SAELens may skip subtracting ``b_dec``
before encoding (``apply_b_dec_to_input: false``); that is folded into the encoder bias on load so
the one SAE formula still holds.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...blocks.names import infer_model_family
from ...errors import SAEFormatError
from ..model import SparseAutoencoder
from .base import build_sae
from .common import (
    check_k,
    config_int,
    folder_hookpoint,
    hookpoint_and_kind,
    read_json,
    read_safetensors,
    safetensors_keys,
)

NAME = "saelens"
CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
_ARCHITECTURES = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def matches(path: Path) -> bool:
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        return False
    keys = safetensors_keys(path / WEIGHTS)
    return keys is None or {"W_enc", "W_dec"} <= keys


def hookpoint(path: Path) -> str | None:
    return folder_hookpoint(path)


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


def load(path: Path) -> SparseAutoencoder:
    cfg_path = path / CONFIG
    cfg = read_json(cfg_path)
    d = config_int(cfg, "d_in", cfg_path, minimum=1)
    n = config_int(cfg, "d_sae", cfg_path, minimum=1)
    activation = _architecture(cfg, cfg_path)
    k = None
    if activation == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        k = config_int({"k": cfg.get("k", kwargs.get("k"))}, "k", cfg_path, minimum=1)
        check_k(k, n, cfg_path)
    weights_path = path / WEIGHTS
    tensors, _ = read_safetensors(weights_path)
    names = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
    if activation == "jumprelu":
        if "threshold" not in tensors and isinstance(tensors.get("log_threshold"), torch.Tensor):
            tensors["threshold"] = tensors["log_threshold"].float().exp()
        names["threshold"] = "threshold" if "threshold" in tensors else "log_threshold"
    hook, input_kind = hookpoint_and_kind(cfg, "hook_name", path, cfg_path)
    sae = build_sae(weights_path, tensors, names, d, n, k, transposed=("W_enc",), activation=activation,
                    hookpoint=hook, input_kind=input_kind,
                    model_family=cfg.get("model_family") or infer_model_family(hook, d), source_format=NAME,
                    name=path.name)
    if not cfg.get("apply_b_dec_to_input", True):
        with torch.no_grad():
            sae.b_enc.add_(sae.W_enc @ sae.b_dec)
    return sae
