"""Planted classifiers for the unlearning scores: ViTs in timm's layout whose weights read the colour of an image,
written as real checkpoint files (safetensors / torch + the JSON of class names), and pictures to feed them.

How the ViT reads a colour (written with plain torch, independently of sae_core): the patch embedding puts each
patch's mean normalised colour ``x = (r, g, b)`` (ToTensor + Normalize(0.5, 0.5): in [-1, 1]) and ``-x`` into the
first six of 8 dimensions, so every token has mean 0 and LayerNorm only divides it by its norm; attention is uniform
(query and key weights 0) with identity values, so the class token receives the mean of the normalised patch colours;
the MLPs are 0; the final LayerNorm keeps its direction and the head scores it against one colour direction per
class. An image filled with one colour is classified as the class whose direction is closest to that colour.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

DIM, PATCH, IMAGE, DEPTH, HEADS = 8, 8, 32, 2, 2
RGB = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}
YCM = {"yellow": (1, 1, 0), "cyan": (0, 1, 1), "magenta": (1, 0, 1)}


def colour_vit_state(directions: list[tuple[float, float, float]], gain: float = 20.0,
                     centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict[str, torch.Tensor]:
    """timm ViT tensors (width 8, 2 blocks, 8 px patches at 32 px) classifying by colour direction: of each
    patch's normalised colour minus ``centre`` (the patch-embedding bias), so that it can read how an image's colour
    differs from an average colour."""
    s: dict[str, torch.Tensor] = {}
    proj = torch.zeros(DIM, 3, PATCH, PATCH)
    for c in range(3):
        proj[c, c] = 1.0 / PATCH ** 2
        proj[3 + c, c] = -1.0 / PATCH ** 2
    c = torch.tensor(centre, dtype=torch.float32)
    s["patch_embed.proj.weight"] = proj
    s["patch_embed.proj.bias"] = torch.cat([-c, c, torch.zeros(DIM - 6)])
    s["cls_token"] = torch.zeros(1, 1, DIM)
    s["pos_embed"] = torch.zeros(1, (IMAGE // PATCH) ** 2 + 1, DIM)
    for b in range(DEPTH):
        p = f"blocks.{b}."
        s[p + "norm1.weight"], s[p + "norm1.bias"] = torch.ones(DIM), torch.zeros(DIM)
        qkv = torch.zeros(3 * DIM, DIM)
        qkv[2 * DIM:] = torch.eye(DIM)  # values = the normalised token; queries and keys 0: uniform attention
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = qkv, torch.zeros(3 * DIM)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = torch.eye(DIM), torch.zeros(DIM)
        s[p + "norm2.weight"], s[p + "norm2.bias"] = torch.ones(DIM), torch.zeros(DIM)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = torch.zeros(4 * DIM, DIM), torch.zeros(4 * DIM)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = torch.zeros(DIM, 4 * DIM), torch.zeros(DIM)
    s["norm.weight"], s["norm.bias"] = torch.ones(DIM), torch.zeros(DIM)
    head = torch.zeros(len(directions), DIM)
    for k, d in enumerate(directions):
        v = torch.tensor(d, dtype=torch.float32)
        head[k, :3] = gain * v / v.norm()
    s["head.weight"], s["head.bias"] = head, torch.zeros(len(directions))
    return s


def write_colour_classifier(folder: Path, name: str, classes: list[str], colours: list[tuple], *,
                            fmt: str = "safetensors", extra: dict | None = None,
                            centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """``folder/name.safetensors`` (or ``.pth``, a dict with ``model_state_dict`` as UnlearnCanvas saves it) and
    ``folder/name.json``; class k is the colour direction ``colours[k]`` in normalised space (x = 2 rgb - 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = colour_vit_state([tuple(c) for c in colours], centre=centre)
    if fmt == "safetensors":
        path = folder / f"{name}.safetensors"
        save_file(state, str(path))
    else:
        path = folder / f"{name}.pth"
        torch.save({"model_state_dict": state, "epoch": 3}, path)
    (folder / f"{name}.json").write_text(json.dumps({"classes": classes, **(extra or {})}))
    return path


def solid(rgb: tuple[float, float, float], size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """(H, W, 3) uint8 filled with one colour (components in [0, 1])."""
    h, w = size
    return np.tile((np.asarray(rgb, dtype=float) * 255).round().astype(np.uint8), (h, w, 1))


def rgb_of(x: tuple[float, float, float]) -> tuple[float, ...]:
    """The colour whose normalised value (2 rgb - 1) is x."""
    return tuple((v + 1) / 2 for v in x)


def save_solid(path: Path, rgb, size=(40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(solid(rgb, size)).save(path, quality=100)
    return path


def colour_features(images: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """What the colour ViT's head reads for IMAGE batches (B, H, W, 3): the direction of the mean, over patches, of
    each patch's unit colour deviation from ``centre`` (for planting class directions)."""
    import torch.nn.functional as F

    x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(IMAGE, IMAGE), mode="bilinear", align_corners=False,
                      antialias=True) * 2 - 1
    patches = F.avg_pool2d(x, PATCH).flatten(2).transpose(1, 2) - centre  # (B, tokens, 3)
    unit = patches / patches.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    mean = unit.mean(1)
    return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)
