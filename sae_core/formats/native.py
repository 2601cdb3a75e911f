"""This package's own format: one .safetensors file whose metadata says everything about the SAE.

Tensors: ``W_enc`` (n, d), ``b_enc`` (n), ``W_dec`` (n, d), ``b_dec`` (d), optional ``threshold`` (n) and
feature statistics ``feature_mean``, ``feature_std``, ``feature_firing_rate`` (n). Metadata (strings):
``sae_format``, ``format_version``, ``d_in``, ``n_latents``, ``k``, ``activation``, ``input_norm``,
``hookpoint``, ``input_kind``, ``model_family``, ``source_format``, ``name`` and free-form JSON ``extra``
(training settings, provenance).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import SAEFormatError
from ..io_utils import atomic_write
from ..model import ACTIVATIONS, INPUT_KINDS, SparseAutoencoder
from .common import read_safetensors, read_safetensors_metadata, require_finite, require_tensor

NAME = "native"
FORMAT_TAG = "sae-lab"
FORMAT_VERSION = 1
_STATS = ("feature_mean", "feature_std", "feature_firing_rate")


def matches_file(path: Path) -> bool:
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    metadata = read_safetensors_metadata(path)
    return bool(metadata) and metadata.get("sae_format") == FORMAT_TAG


def _meta_int(meta: dict, key: str, path: Path, *, optional: bool = False) -> int | None:
    raw = meta.get(key)
    if raw in (None, "", "none") and optional:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise SAEFormatError(path, f"metadata field {key!r} is not an integer", found=repr(raw)) from None


def load(path: Path) -> SparseAutoencoder:
    tensors, meta = read_safetensors(path)
    if meta.get("sae_format") != FORMAT_TAG:
        raise SAEFormatError(path, "is not a native SAE file", found=f"metadata {sorted(meta)}",
                             expected=f"metadata sae_format={FORMAT_TAG!r}")
    version = _meta_int(meta, "format_version", path)
    if version > FORMAT_VERSION:
        raise SAEFormatError(path, "was written by a newer version of this package", found=f"format {version}",
                             expected=f"format <= {FORMAT_VERSION} (update the node pack)")
    d = _meta_int(meta, "d_in", path)
    n = _meta_int(meta, "n_latents", path)
    k = _meta_int(meta, "k", path, optional=True)
    activation = meta.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise SAEFormatError(path, "unknown activation in metadata", found=repr(activation),
                             expected=" or ".join(ACTIVATIONS))
    if activation == "topk" and (k is None or not 1 <= k <= n):
        raise SAEFormatError(path, "k is out of range", found=f"k={k}", expected=f"1 <= k <= n_latents={n}")
    input_kind = meta.get("input_kind") or None
    if input_kind not in (None, *INPUT_KINDS):
        raise SAEFormatError(path, "unknown input_kind in metadata", found=repr(input_kind),
                             expected=" or ".join(INPUT_KINDS))
    weights = {
        "W_enc": require_tensor(tensors, "W_enc", (n, d), path),
        "b_enc": require_tensor(tensors, "b_enc", (n,), path),
        "W_dec": require_tensor(tensors, "W_dec", (n, d), path),
        "b_dec": require_tensor(tensors, "b_dec", (d,), path),
    }
    if activation == "jumprelu":
        weights["threshold"] = require_tensor(tensors, "threshold", (n,), path)
    stats = {name: require_tensor(tensors, name, (n,), path) for name in _STATS if name in tensors}
    require_finite(weights, path)
    sae = SparseAutoencoder(
        d, n, k, activation=activation, input_norm=meta.get("input_norm") == "true",
        hookpoint=meta.get("hookpoint") or None, input_kind=input_kind,
        model_family=meta.get("model_family") or None, source_format=meta.get("source_format") or NAME,
        name=meta.get("name") or path.stem,
    )
    with torch.no_grad():
        for key, value in weights.items():
            getattr(sae, key).copy_(value)
    sae.set_feature_stats(stats.get("feature_mean"), stats.get("feature_std"), stats.get("feature_firing_rate"))
    sae.extra = json.loads(meta.get("extra") or "{}")
    return sae


def metadata_for(sae: SparseAutoencoder, extra: dict | None = None) -> dict[str, str]:
    merged = {**getattr(sae, "extra", {}), **(extra or {})}
    return {
        "sae_format": FORMAT_TAG,
        "format_version": str(FORMAT_VERSION),
        "d_in": str(sae.d_in),
        "n_latents": str(sae.n_latents),
        "k": "" if sae.k is None else str(sae.k),
        "activation": sae.activation,
        "input_norm": "true" if sae.input_norm else "false",
        "hookpoint": sae.hookpoint or "",
        "input_kind": sae.input_kind or "",
        "model_family": sae.model_family or "",
        "source_format": sae.source_format,
        "name": sae.name,
        "extra": json.dumps(merged, sort_keys=True),
    }


def save(sae: SparseAutoencoder, path: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``sae`` as one native .safetensors file, atomically (a crash never leaves half a file)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise SAEFormatError(path, "native SAE files must end in .safetensors", found=path.suffix or "no suffix")
    tensors = {name: getattr(sae, name).detach().float().cpu().contiguous()
               for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    for name in ("threshold", *_STATS):
        value = getattr(sae, name)
        if value is not None:
            tensors[name] = value.detach().float().cpu().contiguous()
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata_for(sae, extra))
    return path
