"""EleutherAI sparsify / SAeUron folders: cfg.json + sae.safetensors, one folder per hookpoint.

SAeUron's SAEs encode the block *output*; a cfg field ``input_kind`` (our extension) overrides that.
"""
from __future__ import annotations

from pathlib import Path

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

NAME = "sparsify"
CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"


def matches(path: Path) -> bool:
    """cfg.json beside a safetensors file with sparsify's tensor names (encoder.weight, W_dec)."""
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        return False
    keys = safetensors_keys(path / WEIGHTS)
    return keys is None or {"encoder.weight", "W_dec"} <= keys


def hookpoint(path: Path) -> str | None:
    return folder_hookpoint(path)


def load(path: Path) -> SparseAutoencoder:
    cfg_path = path / CONFIG
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
    weights_path = path / WEIGHTS
    tensors, _ = read_safetensors(weights_path)
    if "W_skip" in tensors:
        raise SAEFormatError(weights_path, "has a skip connection (W_skip), which edits cannot separate from features",
                             expected="an SAE without W_skip")
    hook, input_kind = hookpoint_and_kind(cfg, "hookpoint", path, cfg_path)
    return build_sae(
        weights_path, tensors, {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"},
        d, n, k, input_norm=bool(cfg.get("input_unit_norm", False)), hookpoint=hook, input_kind=input_kind,
        model_family=cfg.get("model_family") or infer_model_family(hook, d), source_format=NAME, name=path.name,
    )
