"""SAELens folders (>= 6, and the older layout): cfg.json + sae_weights.safetensors (``W_enc`` stored (d_in, d_sae)).

Read as SAELens 6's ``saes/*.py`` compute them, folded into the one SAE formula:

- the hook name comes from ``metadata.hook_name`` (SAELens 6), else the top-level ``hook_name`` / ``hook_point``;
- standard (ReLU), topk (``k``; ``rescale_acts_by_decoder_norm`` folds each decoder row's norm into the encoder,
  which gives the same activations and reconstruction), jumprelu (``threshold``; batchtopk and matryoshka SAEs are
  saved as jumprelu), gated (``b_gate``, ``b_mag``, ``r_mag``): the magnitude path ``relu(W_enc e^r_mag x + b_mag)``
  gated by ``W_enc x + b_gate > 0`` is a JumpReLU on the magnitude pre-activation with threshold
  ``b_mag - b_gate e^r_mag``;
- ``apply_b_dec_to_input: false`` is folded into the encoder bias;
- ``normalize_activations``: ``expected_average_only_in`` multiplies inputs by a constant (from
  ``activation_scaler.json`` or the cfg's ``norm_scaling_factor``) and divides outputs by it, so it is folded into
  the weights as SAELens's own ``fold_activation_norm_scaling_factor`` does; ``constant_norm_rescale`` and
  ``layer_norm`` depend on each vector and stay run-time normalisations of the SAE (undone with the same vector's
  scale, so an edit's decoded change is in the block's units).

Transcoders (``d_out``, ``metadata.hook_name_out``) and head-reshaped (``hook_z``) SAEs are refused with the reason.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ...errors import SAEFormatError
from ..model import SparseAutoencoder
from .base import build_sae, fold_decoder_norms
from .common import (
    check_k,
    config_int,
    hookpoint_and_kind,
    read_json,
    read_safetensors,
    require_tensor,
    safetensors_keys,
)

NAME = "saelens"
CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SCALER = "activation_scaler.json"
_ARCHITECTURES = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated",
                  "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}
_TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder")
_NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


def matches(path: Path) -> bool:
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        return False
    keys = safetensors_keys(path / WEIGHTS)
    return keys is None or {"W_enc", "W_dec"} <= keys


def _hook_name(cfg: dict) -> str | None:
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for value in (metadata.get("hook_name"), cfg.get("hook_name"), cfg.get("hook_point")):
        if isinstance(value, str) and value.strip():
            return value
    return None


def hookpoint(path: Path) -> str | None:
    try:
        cfg = read_json(path / CONFIG)
    except SAEFormatError:
        return None
    return hookpoint_and_kind({"hook": _hook_name(cfg)}, "hook", path, path / CONFIG)[0]


def _architecture(cfg: dict, path: Path) -> str:
    arch = str(cfg.get("architecture", "standard")).lower()
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    if arch in _TRANSCODERS or "d_out" in cfg or metadata.get("hook_name_out"):
        raise SAEFormatError(path, "is a transcoder: it predicts the activation at another hook "
                                   f"({metadata.get('hook_name_out') or cfg.get('d_out')!r}) from this one, so its "
                                   "decoded features do not belong to the activation it reads and edits cannot use it",
                             found=f"architecture {arch!r}", expected="an SAE (standard, topk, jumprelu or gated)")
    if arch == "standard" and str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))).lower() == "topk":
        arch = "topk"  # before SAELens 6
    if arch not in _ARCHITECTURES:
        raise SAEFormatError(path, "unsupported SAELens architecture", found=repr(arch),
                             expected="one of " + ", ".join(sorted(_ARCHITECTURES)))
    if cfg.get("reshape_activations", "none") not in (None, "none") or metadata.get("hook_head_index") is not None:
        raise SAEFormatError(path, "reads attention-head activations (hook_z / one head), which no diffusion block "
                                   "gives", found=f"reshape_activations {cfg.get('reshape_activations')!r}",
                             expected="'none'")
    return _ARCHITECTURES[arch]


def _scaling_factor(cfg: dict, folder: Path, cfg_path: Path) -> float:
    """The constant of ``expected_average_only_in``: ``activation_scaler.json`` (SAELens training) or the cfg."""
    scaler = folder / SCALER
    if scaler.is_file():
        where, raw = scaler, read_json(scaler).get("scaling_factor", "missing")
        if raw is None:  # SAELens saves None when it never scaled: its scale() is then the identity
            return 1.0
    else:
        where, raw = cfg_path, cfg.get("norm_scaling_factor", cfg.get("scaling_factor"))
        if raw is None:
            raise SAEFormatError(cfg_path, "uses normalize_activations 'expected_average_only_in' but its scaling "
                                           "factor is not there", found=f"no {SCALER} beside it",
                                 expected=f"{SCALER} with {{\"scaling_factor\": ...}} (saved by SAELens training)")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
        raise SAEFormatError(where, "scaling_factor is invalid", found=repr(raw)[:80], expected="a positive number")
    return float(raw)


def _weights(tensors: dict, arch: str, d: int, n: int, path: Path) -> tuple[dict, dict]:
    """Tensors in our names (gated converted to its JumpReLU form) and the names ``build_sae`` reads."""
    names = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
    if arch == "gated":
        w_enc = require_tensor(tensors, "W_enc", (d, n), path)
        b_gate, b_mag, r_mag = (require_tensor(tensors, key, (n,), path) for key in ("b_gate", "b_mag", "r_mag"))
        tensors = {**tensors, "W_enc": w_enc * r_mag.exp(), "b_enc": b_mag, "threshold": b_mag - b_gate * r_mag.exp()}
    if arch in ("jumprelu", "gated"):
        if "threshold" not in tensors and isinstance(tensors.get("log_threshold"), torch.Tensor):
            tensors = {**tensors, "threshold": tensors["log_threshold"].float().exp()}
        names["threshold"] = "threshold"
    return tensors, names


def load(path: Path) -> SparseAutoencoder:
    cfg_path = path / CONFIG
    cfg = read_json(cfg_path)
    d = config_int(cfg, "d_in", cfg_path, minimum=1)
    n = config_int(cfg, "d_sae", cfg_path, minimum=1)
    arch = _architecture(cfg, cfg_path)
    norm = cfg.get("normalize_activations") or "none"
    if norm not in _NORMALIZATIONS:
        raise SAEFormatError(cfg_path, "unknown normalize_activations", found=repr(norm)[:80],
                             expected=" or ".join(_NORMALIZATIONS))
    k = None
    if arch == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        k = config_int({"k": cfg.get("k", kwargs.get("k"))}, "k", cfg_path, minimum=1)
        check_k(k, n, cfg_path)
    weights_path = path / WEIGHTS
    tensors, names = _weights(read_safetensors(weights_path)[0], arch, d, n, weights_path)
    hook, input_kind = hookpoint_and_kind({**cfg, "hook": _hook_name(cfg)}, "hook", path, cfg_path)
    sae = build_sae(weights_path, tensors, names, d, n, k, transposed=("W_enc",),
                    activation="jumprelu" if arch == "gated" else arch,
                    input_norm=norm if norm in ("constant_norm_rescale", "layer_norm") else "none",
                    hookpoint=hook, input_kind=input_kind, model_family=cfg.get("model_family") or None,
                    source_format=NAME, name=path.name)
    with torch.no_grad():
        if norm == "expected_average_only_in":
            c = _scaling_factor(cfg, path, cfg_path)
            sae.W_enc.mul_(c)
            sae.W_dec.div_(c)
            sae.b_dec.div_(c)
        if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
            fold_decoder_norms(sae, weights_path, "rescale_acts_by_decoder_norm")
        if not cfg.get("apply_b_dec_to_input", True):
            sae.b_enc.add_(sae.W_enc @ sae.b_dec)  # thresholds compare the same pre-activation as before
    if arch == "gated":
        sae.extra = {"architecture": "gated"}
    return sae
