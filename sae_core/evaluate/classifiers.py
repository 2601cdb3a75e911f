"""Image classifiers for the unlearning scores: one small interface, and a classifier read from a checkpoint.

The interface (:class:`ImageClassifier`) is all the scores need: ``classifier(images)`` takes a batch of images as
ComfyUI's IMAGE, (B, H, W, 3) floats in [0, 1], and returns (B, K) probabilities over ``classifier.class_names``.
The CLIP zero-shot adapter (nodes/evaluate.py) and the checkpoint classifier below both implement it; so can any
object with those two members (tests plant one).

Checkpoint classifiers (the UnlearnCanvas style and object classifiers, which users download themselves) are ViTs
in timm's layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}``, ``norm``, ``head``; UnlearnCanvas: ``vit_large_patch16_224.augreg_in21k`` with a new head), in
one of two files, beside a JSON of class names:

- ``NAME.safetensors``: the state dict; or ``NAME.pth`` / ``.pt`` / ``.bin``: a torch file read with
  ``torch.load(weights_only=True)`` (a file that would run code is refused, never executed). A dict holding the
  state dict under ``model_state_dict`` / ``state_dict`` / ``model`` (how UnlearnCanvas saves them) is unwrapped.
- ``NAME.json``: ``{"classes": [...]}`` in the order of the head's outputs (or just the list), optionally
  ``"mean"`` / ``"std"`` (per channel; default 0.5, UnlearnCanvas's normalisation), ``"image_size"`` (default: from
  ``pos_embed``) and ``"num_heads"`` (default width / 64, as every timm ViT).

The sizes (width, depth, patch, image size, classes) are read from the tensors' shapes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SAEFormatError, SAEInputError
from ..validate import check_text

CHECKPOINT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin")
MAX_CLASSES = 1000
MAX_CLASS_NAME = 120
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
LAYER_NORM_EPS = 1e-6  # timm's ViT


@runtime_checkable
class ImageClassifier(Protocol):
    """``classifier(images (B, H, W, 3) in [0, 1]) -> (B, K) probabilities``; K = len(class_names)."""

    class_names: tuple[str, ...]

    def __call__(self, images: Tensor) -> Tensor: ...


def check_class_names(names: object, what: str = "class names") -> tuple[str, ...]:
    """Unique, non-empty, single-line names (at most MAX_CLASSES of MAX_CLASS_NAME characters each)."""
    if isinstance(names, str):
        names = [line.strip() for line in check_text(what, names, MAX_CLASSES * (MAX_CLASS_NAME + 2)).splitlines()]
        names = [n for n in names if n]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise SAEInputError(f"{what} must be a list of names")
    names = [check_text(what, n, MAX_CLASS_NAME, single_line=True).strip() for n in names]
    if len(names) < 2:
        raise SAEInputError(f"{what}: give at least two classes, one per line (a classifier with one class always "
                            f"predicts it)")
    if len(names) > MAX_CLASSES:
        raise SAEInputError(f"{what}: {len(names)} classes; at most {MAX_CLASSES} are allowed")
    from .metrics import canonical

    seen: dict[str, str] = {}
    for n in names:
        if not n:
            raise SAEInputError(f"{what}: a class name is empty")
        if canonical(n) in seen:
            raise SAEInputError(f"{what}: {n!r} is given twice (names are compared ignoring case and '_')")
        seen[canonical(n)] = n
    return tuple(names)


def check_probabilities(probabilities: Tensor, n_images: int, class_names: tuple[str, ...], source: str) -> Tensor:
    """(B, K) float64 rows of non-negative finite probabilities summing to 1 (what every classifier must give)."""
    p = torch.as_tensor(probabilities).detach().to("cpu", torch.float64)
    if p.shape != (n_images, len(class_names)):
        raise SAEInputError(f"{source} returned shape {tuple(p.shape)} for {n_images} images; expected "
                            f"({n_images}, {len(class_names)}) probabilities over its classes")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or \
            not torch.allclose(p.sum(1), torch.ones(n_images, dtype=torch.float64), atol=1e-3):
        raise SAEInputError(f"{source} returned values that are not probabilities (finite, >= 0, each row "
                            f"summing to 1)")
    return p


def check_images(images: object) -> Tensor:
    """A ComfyUI IMAGE: (B, H, W, 3) finite floats (clamped to [0, 1])."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise SAEInputError(f"images must be a (batch, height, width, 3) IMAGE, got {shape}")
    if not bool(torch.isfinite(images).all()):
        raise SAEInputError("the images hold NaN or infinite values")
    return images.float().clamp(0.0, 1.0)


# ---------------------------------------------------------------------- the ViT (timm's layout)
class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """timm's ``VisionTransformer`` with a class token, pre-norm blocks and a linear head (what UnlearnCanvas's
    classifiers are); its state dict keys are timm's."""

    def __init__(self, *, dim: int, depth: int, heads: int, hidden: int, patch: int, grid: int, n_classes: int):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def vit_from_state_dict(state: dict[str, Tensor], num_heads: int | None = None) -> VisionTransformer:
    """A ViT sized from timm-layout tensors, with them loaded (strictly: a missing or extra tensor is refused)."""
    needed = ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "head.weight",
              "blocks.0.attn.qkv.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise SAEInputError(f"not a ViT classifier in timm's layout: no {', '.join(missing)} (expected "
                            f"patch_embed.proj, cls_token, pos_embed, blocks.N.*, norm, head)")
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit())
    tokens = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise SAEInputError(f"pos_embed has {tokens} patch positions, not a square grid")
    heads = num_heads or max(1, dim // 64)
    if dim % heads:
        raise SAEInputError(f"width {dim} is not divisible by {heads} heads; set num_heads in the classifier's JSON")
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else 4 * dim
    model = VisionTransformer(dim=dim, depth=depth, heads=heads, hidden=hidden, patch=patch, grid=grid,
                              n_classes=state["head.weight"].shape[0])
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    absent = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if unexpected or absent or wrong:
        listing = "; ".join(part for part in (
            f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
            f"missing {', '.join(absent[:5])}" if absent else "",
            f"wrong shape {', '.join(wrong[:5])}" if wrong else "") if part)
        raise SAEInputError(f"the tensors do not form a timm ViT (pre-norm blocks, class token, linear head): "
                            f"{listing}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval().requires_grad_(False)


class CheckpointClassifier:
    """A ViT classifier read from a checkpoint + JSON of class names (see the module's docstring)."""

    def __init__(self, model: VisionTransformer, class_names: tuple[str, ...], *, image_size: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], name: str = "classifier"):
        if model.head.out_features != len(class_names):
            raise SAEInputError(f"classifier {name!r} has {model.head.out_features} outputs but its JSON names "
                                f"{len(class_names)} classes")
        self.model, self.class_names, self.image_size, self.name = model, class_names, image_size, name
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.device = torch.device("cpu")

    def to(self, device) -> CheckpointClassifier:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def describe(self) -> str:
        m = self.model
        return (f"classifier '{self.name}': ViT, width {m.head.in_features}, {len(m.blocks)} blocks, "
                f"{self.image_size} px, {len(self.class_names)} classes ({', '.join(self.class_names[:6])}"
                f"{', ...' if len(self.class_names) > 6 else ''})")

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = check_images(images).permute(0, 3, 1, 2).to(self.device)
        # UnlearnCanvas: Resize((224, 224)) (bilinear, antialiased on PIL images), ToTensor, Normalize
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=True)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return self.model(x).float().softmax(-1).cpu()


def _read_tensors(path: Path) -> dict[str, Tensor]:
    from ..sae.formats.common import read_safetensors, read_torch_pickle

    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path)[0]
    data = read_torch_pickle(path)  # weights_only: a pickle that would run code is refused, never executed
    for key in WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise SAEFormatError(path, "holds no state dict", expected=f"a dict of tensors (or one under "
                             f"{', '.join(WRAPPER_KEYS)})")
    return {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, Tensor)}


def classes_file(path: str | Path) -> Path:
    """Where a checkpoint's class names are: ``NAME.json`` beside ``NAME.safetensors``."""
    path = Path(path)
    return path.with_name(path.name[: -len(path.suffix)] + ".json") if path.suffix else path.with_suffix(".json")


def _floats(value, what: str, path: Path) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
            and all(math.isfinite(v) for v in value)):
        raise SAEFormatError(path, f"'{what}' must be a number or three numbers", found=repr(value)[:60])
    if what == "std" and min(value) <= 0:
        raise SAEFormatError(path, "'std' must be positive", found=repr(value)[:60])
    return tuple(float(v) for v in value)


def load_classifier(path: str | Path, shown_name: str | None = None) -> CheckpointClassifier:
    """The checkpoint classifier at ``path`` with its class names from ``NAME.json`` beside it."""
    path = Path(path)
    name = shown_name or path.name
    if path.suffix.lower() not in CHECKPOINT_EXTENSIONS or not path.is_file():
        raise SAEInputError(f"classifier {name!r} is not a {'/'.join(CHECKPOINT_EXTENSIONS)} file")
    meta_path = classes_file(path)
    if not meta_path.is_file():
        raise SAEInputError(f"classifier {name!r} has no class names: put {meta_path.name} beside it, holding "
                            f'{{"classes": ["first class", "second class", ...]}} in the order of its outputs')
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.stat().st_size < 1 << 20 else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(meta_path, "is not JSON", found=str(exc)[:100]) from None
    if isinstance(meta, list):
        meta = {"classes": meta}
    if not isinstance(meta, dict) or "classes" not in meta:
        raise SAEFormatError(meta_path, "names no classes", expected='{"classes": [...]} (under 1 MB)')
    class_names = check_class_names(meta["classes"], f"the classes in {meta_path.name}")
    heads = meta.get("num_heads")
    if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or not 1 <= heads <= 256):
        raise SAEFormatError(meta_path, "'num_heads' must be an integer from 1 to 256", found=repr(heads)[:60])
    tensors = _read_tensors(path)
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise SAEFormatError(path, "holds NaN or infinite weights", found=bad)
    try:
        model = vit_from_state_dict(tensors, heads)
    except SAEInputError as exc:
        raise SAEFormatError(path, "is not a classifier SAE Lab can run", found=str(exc)) from None
    native = math.isqrt(model.pos_embed.shape[1] - 1) * model.patch_embed.proj.kernel_size[0]
    size = meta.get("image_size", native)
    if not isinstance(size, int) or isinstance(size, bool) or size != native:
        raise SAEFormatError(meta_path, "'image_size' does not match the checkpoint's position embedding",
                             found=repr(size)[:60], expected=str(native))
    return CheckpointClassifier(model, class_names, image_size=size,
                                mean=_floats(meta.get("mean", 0.5), "mean", meta_path),
                                std=_floats(meta.get("std", 0.5), "std", meta_path), name=path.stem)


def classify(classifier: ImageClassifier, images: Tensor, source: str | None = None) -> Tensor:
    """The classifier's (B, K) probabilities, checked (shape, finite, rows summing to 1)."""
    images = check_images(images)
    names = tuple(classifier.class_names)
    return check_probabilities(classifier(images), images.shape[0], names,
                               source or f"classifier {getattr(classifier, 'name', type(classifier).__name__)!r}")


# ---------------------------------------------------------------------- CLIP zero-shot
CLIP_LOGIT_SCALE = 100.0  # CLIP's learned temperature (exp(4.6052))


class ZeroShotClassifier:
    """CLIP zero-shot: ``softmax(100 * cos(image embedding, text embedding of each class prompt))``.

    ``encode_images`` maps an IMAGE batch to (B, D) image embeddings (CLIP vision with its projection);
    ``text_embeddings`` are (K, D), one per class, in the same joint space (the text model with its projection).
    """

    def __init__(self, encode_images, text_embeddings: Tensor, class_names: tuple[str, ...],
                 name: str = "CLIP zero-shot", logit_scale: float = CLIP_LOGIT_SCALE):
        text = torch.as_tensor(text_embeddings).detach().float().cpu()
        if text.ndim != 2 or text.shape[0] != len(class_names):
            raise SAEInputError(f"{len(class_names)} classes but text embeddings of shape {tuple(text.shape)}")
        norms = text.norm(dim=-1)
        if not bool(torch.isfinite(text).all()) or bool((norms < 1e-6).any()):
            raise SAEInputError("the CLIP text embeddings are zero or not finite: this text encoder has no usable "
                                "text projection (SD1.5 checkpoints do not ship one); pick a text_projection file, "
                                "e.g. the full OpenAI CLIP ViT-L/14 model in models/clip_vision")
        self.encode_images, self.class_names, self.name = encode_images, tuple(class_names), name
        self.text = text / norms[:, None]
        self.logit_scale = float(logit_scale)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        emb = torch.as_tensor(self.encode_images(check_images(images))).detach().float().cpu()
        if emb.ndim != 2 or emb.shape[1] != self.text.shape[1]:
            raise SAEInputError(f"the CLIP vision model gives {tuple(emb.shape[1:])}-d image embeddings but the text "
                                f"embeddings are {self.text.shape[1]}-d: these two models are not an aligned CLIP "
                                f"pair (aligned: OpenAI ViT-L/14 vision with CLIP-L text + its projection, 768-d; "
                                f"ViT-bigG/14 vision with SDXL's CLIP-G text, 1280-d)")
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (self.logit_scale * emb @ self.text.t()).softmax(-1)


def class_prompts(class_names: tuple[str, ...], template: str) -> list[str]:
    """One prompt per class from a template with one ``{}`` (e.g. ``a painting in {} style``); underscores in
    names become spaces, as SAeUron writes UnlearnCanvas's classes into prompts."""
    template = check_text("template", template, 500, single_line=True)
    if template.count("{}") != 1 or "{" in template.replace("{}", "", 1) or "}" in template.replace("{}", "", 1):
        raise SAEInputError(f"template {template[:60]!r} must hold exactly one {{}} where the class name goes, "
                            f"e.g. 'a photo of {{}}' or 'a painting in {{}} style'")
    return [template.replace("{}", name.replace("_", " ")) for name in class_names]


def read_text_projection(path: str | Path) -> tuple[Tensor, str]:
    """A CLIP text projection from a .safetensors file, as a (hidden, projection) matrix applied as ``x @ P``,
    and the key it came from. HF layout ``text_projection.weight`` (projection, hidden) or OpenCLIP's
    ``text_projection`` (hidden, projection), possibly under a prefix; only that tensor is read."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise SAEInputError(f"{path.name}: a text projection is read from .safetensors files only")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            hf = sorted((k for k in keys if k.endswith("text_projection.weight")), key=len)
            oc = sorted((k for k in keys if k == "text_projection" or k.endswith(".text_projection")), key=len)
            if hf:
                key, matrix = hf[0], handle.get_tensor(hf[0]).float().t()
            elif oc:
                key, matrix = oc[0], handle.get_tensor(oc[0]).float()
            else:
                raise SAEInputError(f"{path.name} holds no CLIP text projection (text_projection.weight or "
                                    f"text_projection); use the full CLIP model file, e.g. OpenAI's ViT-L/14 "
                                    f"model.safetensors")
    except SAEInputError:
        raise
    except Exception as exc:
        raise SAEFormatError(path, "cannot be read as safetensors", found=type(exc).__name__) from None
    if matrix.ndim != 2 or not bool(torch.isfinite(matrix).all()):
        raise SAEFormatError(path, f"{key} is not a finite matrix", found=str(tuple(matrix.shape)))
    return matrix.contiguous(), key
