"""EleutherAI sparsify (>= 1.3) / SAeUron folders: cfg.json + sae.safetensors, one folder per hookpoint.

As sparsify's ``SparseCoder`` computes them: ``relu(encoder(x - b_dec))``, then ``topk`` (k largest) or ``groupmax``
(the largest of each of k groups of n/k latents), decoded as ``sum z_j W_dec[j] + b_dec``. ``multi_topk`` is a
training loss only (inference is the plain top k). ``skip_connection`` adds ``x W_skip^T`` to the reconstruction: it
depends on the input alone, so an edit of features (which changes only their decoded contributions and keeps the
SAE's error) is exact with it; SAE Lab keeps ``W_skip`` for reconstructions. Transcoders (``transcode: true``) and
SAEs saved without their decoder are refused. SAeUron's SAEs encode the block *output*; a cfg field ``input_kind``
(our extension) overrides that.
"""
from __future__ import annotations

from pathlib import Path

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
_ACTIVATIONS = ("topk", "groupmax")


def matches(path: Path) -> bool:
    """cfg.json beside a safetensors file with sparsify's encoder (encoder.weight)."""
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        return False
    keys = safetensors_keys(path / WEIGHTS)
    return keys is None or "encoder.weight" in keys


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
    if activation not in _ACTIVATIONS:
        raise SAEFormatError(cfg_path, "unsupported sparsify activation", found=repr(activation)[:80],
                             expected=" or ".join(repr(a) for a in _ACTIVATIONS))
    if activation == "groupmax" and n % k:
        raise SAEFormatError(cfg_path, "groupmax needs the latents to split into k equal groups",
                             found=f"num_latents={n}, k={k}", expected="num_latents divisible by k")
    if cfg.get("transcode"):
        raise SAEFormatError(cfg_path, "is a transcoder (maps one activation to another), not an autoencoder",
                             found="transcode: true", expected="transcode: false")
    weights_path = path / WEIGHTS
    tensors, _ = read_safetensors(weights_path)
    if "W_dec" not in tensors:
        raise SAEFormatError(weights_path, "was saved without its decoder (W_dec), so features cannot be decoded",
                             found=f"tensors {sorted(tensors)}", expected="W_dec of shape "
                                                                         f"({n}, {d})")
    if cfg.get("skip_connection") and "W_skip" not in tensors:
        raise SAEFormatError(weights_path, "tensor 'W_skip' is missing (cfg.json says skip_connection: true)",
                             found=f"tensors {sorted(tensors)}", expected=f"'W_skip' of shape ({d}, {d})")
    hook, input_kind = hookpoint_and_kind(cfg, "hookpoint", path, cfg_path)
    return build_sae(
        weights_path, tensors, {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"},
        d, n, k, activation=activation, input_norm=bool(cfg.get("input_unit_norm", False)), hookpoint=hook,
        input_kind=input_kind, model_family=cfg.get("model_family") or None, source_format=NAME, name=path.name,
        skip=tensors.get("W_skip"),
    )
