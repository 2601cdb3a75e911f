"""This package's own format: one .safetensors file whose metadata says everything about the SAE.

Tensors: ``W_enc`` (n, d), ``b_enc`` (n), ``W_dec`` (n, d), ``b_dec`` (d), optional ``threshold`` (n) and
feature statistics ``feature_mean``, ``feature_std``, ``feature_firing_rate`` (n). Metadata (strings):
``sae_format``, ``format_version``, ``d_in``, ``n_latents``, ``k``, ``activation``, ``input_norm``,
``hookpoint``, ``input_kind``, ``model_family`` (sdxl, sd15, flux, sd3, qwen_image...), ``source_format``,
``name`` and free-form JSON ``extra`` (training settings, provenance); optional ``input_normalization`` (one of
``NORMALIZATIONS``, else ``input_norm`` decides), ``stream`` (default image), ``excluded`` (a JSON list of feature
ids) and the tensor ``W_skip`` (d_in, d_in) of a skip connection.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...blocks.patch import INPUT_KINDS
from ...errors import SAEFormatError
from ...files import atomic_write, check_version
from ..model import ACTIVATIONS, NORMALIZATIONS, SPARSE_ACTIVATIONS, STREAMS, SparseAutoencoder
from .base import build_sae
from .common import read_safetensors, read_safetensors_metadata, require_finite, require_tensor

NAME = "native"
FORMAT_TAG = "sae-lab"
FORMAT_VERSION = 1
_STATS = ("feature_mean", "feature_std", "feature_firing_rate")


def matches(path: Path) -> bool:
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    metadata = read_safetensors_metadata(path)
    return bool(metadata) and metadata.get("sae_format") == FORMAT_TAG


def hookpoint(path: Path) -> str | None:
    return (read_safetensors_metadata(path) or {}).get("hookpoint") or None


def _meta_int(meta: dict, key: str, path: Path, *, optional: bool = False) -> int | None:
    raw = meta.get(key)
    if raw in (None, "", "none") and optional:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise SAEFormatError(path, f"metadata field {key!r} is not an integer", found=repr(raw)[:80]) from None


def _meta_json(meta: dict, key: str, path: Path) -> dict:
    try:
        value = json.loads(meta.get(key) or "{}")
    except json.JSONDecodeError as exc:
        raise SAEFormatError(path, f"metadata field {key!r} is not valid JSON", found=str(exc)) from None
    if not isinstance(value, dict):
        raise SAEFormatError(path, f"metadata field {key!r} is not a JSON object", found=type(value).__name__)
    return value


def load(path: Path) -> SparseAutoencoder:
    tensors, meta = read_safetensors(path)
    if meta.get("sae_format") != FORMAT_TAG:
        raise SAEFormatError(path, "is not a native SAE file", found=f"metadata {sorted(meta)}",
                             expected=f"metadata sae_format={FORMAT_TAG!r}")
    check_version(path, _meta_int(meta, "format_version", path), FORMAT_VERSION)
    d = _meta_int(meta, "d_in", path)
    n = _meta_int(meta, "n_latents", path)
    k = _meta_int(meta, "k", path, optional=True)
    activation = meta.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise SAEFormatError(path, "unknown activation in metadata", found=repr(activation)[:80],
                             expected=" or ".join(ACTIVATIONS))
    if d < 1 or n < 1:
        raise SAEFormatError(path, "d_in and n_latents must be positive", found=f"d_in={d}, n_latents={n}")
    if activation in SPARSE_ACTIVATIONS and (k is None or not 1 <= k <= n):
        raise SAEFormatError(path, "k is out of range", found=f"k={k}", expected=f"1 <= k <= n_latents={n}")
    input_kind = meta.get("input_kind") or None
    if input_kind not in (None, *INPUT_KINDS):
        raise SAEFormatError(path, "unknown input_kind in metadata", found=repr(input_kind)[:80],
                             expected=" or ".join(INPUT_KINDS))
    normalization = meta.get("input_normalization") or ("standardize" if meta.get("input_norm") == "true" else "none")
    stream = meta.get("stream") or "image"
    for field, value, valid in (("input_normalization", normalization, NORMALIZATIONS), ("stream", stream, STREAMS)):
        if value not in valid:
            raise SAEFormatError(path, f"unknown {field} in metadata", found=repr(value)[:80],
                                 expected=" or ".join(valid))
    names = {name: name for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if activation == "jumprelu":
        names["threshold"] = "threshold"
    stats = {name: require_tensor(tensors, name, (n,), path) for name in _STATS if name in tensors}
    sae = build_sae(
        path, tensors, names, d, n, k, activation=activation, input_norm=normalization,
        hookpoint=meta.get("hookpoint") or None, input_kind=input_kind, stream=stream, skip=tensors.get("W_skip"),
        model_family=meta.get("model_family") or None, source_format=meta.get("source_format") or NAME,
        name=meta.get("name") or path.stem,
        stats={key.removeprefix("feature_"): value for key, value in stats.items()},
    )
    sae.extra = _meta_json(meta, "extra", path)
    sae.excluded = excluded_features(meta.get("excluded") or "[]", n, path)
    return sae


def excluded_features(text: str, n_latents: int, path: Path) -> tuple[int, ...]:
    """A JSON list of feature ids, each in range, as a sorted tuple."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SAEFormatError(path, "metadata field 'excluded' is not valid JSON", found=str(exc)) from None
    if not isinstance(value, list) or not all(type(f) is int and 0 <= f < n_latents for f in value):
        raise SAEFormatError(path, "metadata field 'excluded' is not a list of feature ids",
                             found=repr(value)[:80], expected=f"integers in 0..{n_latents - 1}")
    return tuple(sorted(set(value)))


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
        "input_normalization": sae.normalization,
        "hookpoint": sae.hookpoint or "",
        "input_kind": sae.input_kind or "",
        "stream": sae.stream,
        "excluded": json.dumps(list(sae.excluded)),
        "model_family": sae.model_family or "",
        "source_format": sae.source_format,
        "name": sae.name,
        "extra": json.dumps(merged, sort_keys=True),
    }


def save(sae: SparseAutoencoder, path: str | Path, *, extra: dict | None = None) -> Path:
    """Write ``sae`` as one native .safetensors file, atomically (a crash never leaves half a file). An SAE with
    NaN or infinite weights or statistics is refused: it would only ever produce black images."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise SAEFormatError(path, "native SAE files must end in .safetensors", found=path.suffix or "no suffix")
    tensors = {name: getattr(sae, name).detach().float().cpu().contiguous()
               for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    for name in ("threshold", "W_skip", *_STATS):
        value = getattr(sae, name)
        if value is not None:
            tensors[name] = value.detach().float().cpu().contiguous()
    require_finite(tensors, path, writing=True)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata_for(sae, extra))
    return path
