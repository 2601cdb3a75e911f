"""Reading checkpoint pieces so that every failure becomes one SAEFormatError naming the file."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ...blocks.names import diffusers_name, hookpoint_of
from ...blocks.patch import INPUT_KINDS
from ...errors import SAEFormatError


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or an error saying what is wrong with the file."""
    if not path.is_file():
        raise SAEFormatError(path, "file is missing", expected="a JSON config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(path, "is not valid JSON", found=str(exc), expected="a JSON object") from None
    if not isinstance(data, dict):
        raise SAEFormatError(path, "is not a JSON object", found=type(data).__name__, expected="a JSON object")
    return data


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file (on CPU)."""
    if not path.is_file():
        raise SAEFormatError(path, "file is missing", expected="a .safetensors weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every corruption
        raise SAEFormatError(
            path, "cannot be read as safetensors (truncated or corrupt?)", found=f"{type(exc).__name__}: {exc}",
            expected="a complete .safetensors file",
        ) from None
    return tensors, metadata


def read_safetensors_metadata(path: Path) -> dict[str, str] | None:
    """Only the header metadata; None if the file is not readable safetensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:
        return None


def safetensors_keys(path: Path) -> set[str] | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except Exception:
        return None


def read_torch_pickle(path: Path):
    """``torch.load`` restricted to tensors and plain containers; a pickle that would run code is refused."""
    if not path.is_file():
        raise SAEFormatError(path, "file is missing", expected="a torch .pth/.pt file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if blocked:
            raise SAEFormatError(
                path, "refused: unpickling it would call code that is not a tensor constructor, so it was not executed",
                found=f"a call to {blocked.group(1)}",
                expected="a pickle holding only tensors and plain containers (weights_only)",
            ) from None
        raise SAEFormatError(
            path, "cannot be read as a torch file (truncated or corrupt?)",
            found=str(exc).split("error:")[-1].strip()[:200],
            expected="a complete torch.save file",
        ) from None
    except Exception as exc:
        raise SAEFormatError(
            path, "cannot be read as a torch file (truncated or corrupt?)", found=f"{type(exc).__name__}: {exc}",
            expected="a complete torch.save file",
        ) from None


def require_tensor(tensors: dict, name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """The tensor ``name`` with exactly ``shape``, as float32."""
    if name not in tensors:
        raise SAEFormatError(path, f"tensor {name!r} is missing", found=f"tensors {sorted(tensors)}",
                             expected=f"{name!r} of shape {shape}")
    tensor = tensors[name]
    if not isinstance(tensor, torch.Tensor):
        raise SAEFormatError(path, f"entry {name!r} is not a tensor", found=type(tensor).__name__)
    if tuple(tensor.shape) != tuple(shape):
        raise SAEFormatError(path, f"tensor {name!r} has the wrong shape (config and weights disagree)",
                             found=str(tuple(tensor.shape)), expected=str(tuple(shape)))
    if not tensor.is_floating_point():
        raise SAEFormatError(path, f"tensor {name!r} is not floating point", found=str(tensor.dtype))
    return tensor.float()


def require_finite(tensors: dict[str, torch.Tensor], path: Path, *, writing: bool = False) -> None:
    """Refuse NaN or infinite weights: such an SAE only ever produces NaN (black) images."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            problem = "not written: " if writing else ""
            raise SAEFormatError(path, f"{problem}tensor {name!r} contains NaN or Inf",
                                 found=f"{bad} non-finite values", expected="finite weights")


def config_int(cfg: dict, key: str, path: Path, *, default: int | None = None, minimum: int = 0) -> int:
    """An integer config field, with the file and field named when it is missing or wrong."""
    value = cfg.get(key, default)
    if value is None:
        raise SAEFormatError(path, f"config field {key!r} is missing", found=f"fields {sorted(cfg)}",
                             expected=f"an integer {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SAEFormatError(path, f"config field {key!r} is invalid", found=repr(value),
                             expected=f"an integer >= {minimum}")
    return value


def check_k(k: int, n_latents: int, path: Path) -> None:
    if not 1 <= k <= n_latents:
        raise SAEFormatError(path, "k is out of range", found=f"k={k}", expected=f"1 <= k <= n_latents={n_latents}")


def folder_hookpoint(folder: Path) -> str | None:
    """The hookpoint a folder's name gives (sparsify and SAELens keep one folder per hookpoint)."""
    block = diffusers_name(folder.name)
    return hookpoint_of(block) if block else None


def hookpoint_and_kind(cfg: dict, hook_field: str, folder: Path, cfg_path: Path) -> tuple[str | None, str]:
    """The hookpoint (from ``cfg[hook_field]`` or the folder's name, when it names a transformer block) and what
    the SAE encodes: the cfg's ``input_kind`` (our extension), else the block output, as SAeUron's SAEs do."""
    block = diffusers_name(str(cfg.get(hook_field) or folder.name))
    input_kind = cfg.get("input_kind", "output")
    if input_kind not in INPUT_KINDS:
        raise SAEFormatError(cfg_path, "config field 'input_kind' is invalid", found=repr(input_kind),
                             expected=" or ".join(INPUT_KINDS))
    return (hookpoint_of(block) if block else None), input_kind
