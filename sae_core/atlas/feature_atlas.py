"""Feature atlas: for every feature of an SAE, the top-N generations by spatially averaged activation,
plus its firing rate and mean activation, built incrementally with bounded memory and stored on disk.

Each generation offered to the atlas brings its sparse code on the block grid (what the recorder
keeps), a prompt, a seed and optionally a thumbnail. Per-feature top-N lists are merged in one
vectorised top-k; a generation's code and thumbnail are kept only while some feature still lists it,
so memory and disk stay bounded by features x N whatever the number of generations. Heatmaps are
drawn on request from the kept codes.

On disk (one folder per SAE, beside it): ``index.json`` (generations, settings), ``atlas.safetensors``
(top-N tables, statistics, the kept codes), ``labels.json`` (the user's labels), ``imported_labels.json`` (label
sets imported from files or the hub, see :mod:`.labels`), ``thumbs/<id>.jpg`` and ``previews/`` (published
pictures of features, see :mod:`.previews`). An atlas may hold labels only, before any run was recorded.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write, atomic_write_text, check_version
from ..sae.model import SparseCode
from ..validate import check_choice, is_inside, relative_parts, resolve_inside, shown
from . import label_search
from .labels import (
    ImportedLabel,
    ShownLabel,
    all_shown,
    read_imported_labels,
    read_user_labels,
    shown_label,
    validate_label,
    write_user_labels,
)

ATLAS_VERSION = 1
ATLAS_SUFFIX = ".atlas"
THUMB_SIZE = 160
DEFAULT_TOP_N = 8
SORTS = ("firing_rate", "mean_activation", "id", "relevance")


def atlas_dir_for(sae_path: str | Path) -> Path:
    """``models/sae/x.safetensors`` -> ``models/sae/x.atlas``; a checkpoint folder ``f`` -> ``f.atlas``."""
    path = Path(sae_path)
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(stem + ATLAS_SUFFIX)


@dataclass
class Generation:
    prompt: str
    seed: int | None
    grid: tuple[int, int]
    has_thumbnail: bool = False
    tokens: list[str] | None = None  # a prompt's tokens at a text-encoder layer (its grid is (1, len(tokens)))


@dataclass
class Example:
    """One generation offered to the atlas: its sparse code on the block grid (h, w, k)."""

    code: SparseCode
    prompt: str = ""
    seed: int | None = None
    thumbnail: np.ndarray | None = None  # (H, W, 3) uint8 or float in [0, 1]
    tokens: list[str] | None = None  # a text example: the texts of its (1, T) positions, scored by their peak


@dataclass
class FeatureAtlas:
    n_latents: int
    top_n: int = 8
    meta: dict = field(default_factory=dict)  # SAE identity: name, hookpoint, fingerprint...

    def __post_init__(self):
        if self.top_n < 1:
            raise SAEInputError(f"top_n must be at least 1, got {self.top_n}")
        self.top_scores = torch.full((self.n_latents, self.top_n), float("-inf"))
        self.top_gens = torch.full((self.n_latents, self.top_n), -1, dtype=torch.long)
        self.active_positions = torch.zeros(self.n_latents, dtype=torch.long)
        self.activation_sum = torch.zeros(self.n_latents, dtype=torch.float64)
        self.total_positions = 0
        self.next_id = 0
        self.generations: dict[int, Generation] = {}
        self.codes: dict[int, SparseCode] = {}
        self.thumbnails: dict[int, np.ndarray] = {}  # kept in memory until saved
        self.labels: dict[int, str] = {}  # the user's labels (labels.json)
        self.imported: dict[int, ImportedLabel] = {}  # imported label sets (imported_labels.json, read-only here)
        self._labels_changed = False

    # ------------------------------------------------------------- building
    def add(self, example: Example) -> int:
        """Offer one generation; returns its id (whether or not any feature keeps it)."""
        values, indices = example.code[0].detach(), example.code[1].detach()
        if values.ndim != 3 or values.shape != indices.shape:
            raise SAEInputError(f"an example's code must be (h, w, k) values and indices, got "
                                f"{tuple(values.shape)} and {tuple(indices.shape)}")
        h, w, k = values.shape
        flat_values = values.reshape(-1, k).float().cpu()
        flat_indices = indices.reshape(-1, k).long().cpu()
        if flat_indices.numel() and (flat_indices.min() < 0 or flat_indices.max() >= self.n_latents):
            raise SAEInputError(f"code indices must be in 0..{self.n_latents - 1}")
        positive = flat_values > 0
        scores = torch.zeros(self.n_latents, dtype=torch.float64)
        scores.index_add_(0, flat_indices[positive], flat_values[positive].double())
        self.activation_sum += scores
        self.active_positions.index_add_(0, flat_indices[positive], torch.ones(int(positive.sum()), dtype=torch.long))
        self.total_positions += h * w
        if example.tokens is None:
            scores = (scores / (h * w)).float()
        else:  # a feature firing on one token of a long prompt ranks as high as on a short one: its peak
            if len(example.tokens) != h * w:
                raise SAEInputError(f"a text example has {len(example.tokens)} tokens but a code of {h * w}")
            scores = torch.zeros(self.n_latents).scatter_reduce_(0, flat_indices[positive], flat_values[positive],
                                                                  "amax")

        gen_id = self.next_id
        self.next_id += 1
        self.generations[gen_id] = Generation(example.prompt, example.seed, (h, w), example.thumbnail is not None,
                                              None if example.tokens is None else list(example.tokens))
        self.codes[gen_id] = SparseCode(values.detach().to(torch.float16).cpu().clone(),
                                        indices.detach().to(torch.int32).cpu().clone())
        if example.thumbnail is not None:
            self.thumbnails[gen_id] = _thumbnail(example.thumbnail)
        self._merge(scores, gen_id)
        self._forget_unreferenced()
        return gen_id

    def _merge(self, scores: torch.Tensor, gen_id: int) -> None:
        """Keep each feature's top-N; a generation enters only where the feature fired (score > 0).
        On ties the earlier generation stays (it is listed first and top-k is stable on sorted input)."""
        candidate = torch.where(scores > 0, scores, torch.tensor(float("-inf")))
        all_scores = torch.cat([self.top_scores, candidate[:, None]], dim=1)
        all_gens = torch.cat([self.top_gens, torch.full((self.n_latents, 1), gen_id, dtype=torch.long)], dim=1)
        order = torch.sort(all_scores, dim=1, descending=True, stable=True).indices[:, : self.top_n]
        self.top_scores = torch.gather(all_scores, 1, order)
        self.top_gens = torch.where(torch.isfinite(self.top_scores), torch.gather(all_gens, 1, order),
                                    torch.tensor(-1))

    def _forget_unreferenced(self) -> None:
        referenced = set(self.top_gens[self.top_gens >= 0].unique().tolist())
        for gen_id in [g for g in self.codes if g not in referenced]:
            del self.codes[gen_id]
            self.generations.pop(gen_id, None)
            self.thumbnails.pop(gen_id, None)

    # ------------------------------------------------------------- reading
    def _check_feature(self, feature: int) -> int:
        if not isinstance(feature, int) or not 0 <= feature < self.n_latents:
            raise SAEInputError(f"feature {feature!r} does not exist: this atlas has {self.n_latents} features "
                                f"(ids 0..{self.n_latents - 1})")
        return feature

    def firing_rate(self) -> torch.Tensor:
        return self.active_positions.double() / max(self.total_positions, 1)

    def mean_activation(self) -> torch.Tensor:
        """Mean activation over the positions where each feature is active (the paper's strength unit)."""
        return self.activation_sum / self.active_positions.clamp_min(1)

    def feature_map(self, gen_id: int, feature: int) -> np.ndarray:
        """The feature's activation on the block grid of a kept generation, (h, w) float32."""
        values, indices = self.codes[gen_id]
        return (values.float() * (indices == feature)).sum(-1).numpy()

    def top_token(self, feature: int) -> str | None:
        """A text atlas: the token the feature fires on most in its top prompt (None for image atlases)."""
        gen_id = int(self.top_gens[feature, 0])
        gen = self.generations.get(gen_id)
        if gen is None or gen.tokens is None:
            return None
        return gen.tokens[int(self.feature_map(gen_id, feature).reshape(-1).argmax())]

    def label(self, feature: int) -> ShownLabel | None:
        """The label shown for a feature: the user's, else an imported one."""
        return shown_label(self.labels, self.imported, feature)

    def shown_labels(self) -> dict[int, ShownLabel]:
        return all_shown(self.labels, self.imported)

    def feature(self, feature: int) -> dict:
        """Everything the browser's detail view shows for one feature."""
        feature = self._check_feature(feature)
        examples = []
        for score, gen_id in zip(self.top_scores[feature].tolist(), self.top_gens[feature].tolist()):
            if gen_id < 0:
                continue
            gen = self.generations[gen_id]
            examples.append({"generation": gen_id, "score": score, "prompt": gen.prompt, "seed": gen.seed,
                             "grid": list(gen.grid), "has_thumbnail": gen.has_thumbnail, "tokens": gen.tokens,
                             "map": self.feature_map(gen_id, feature).round(4).tolist()})
        label = self.label(feature)
        return {"id": feature, "label": label.text if label else "",
                "label_info": label.as_dict() if label else None, "recorded": self.next_id > 0,
                "firing_rate": float(self.firing_rate()[feature]),
                "mean_activation": float(self.mean_activation()[feature]), "examples": examples}

    def summary(self, query: str = "", sort: str = "firing_rate", limit: int = 200, offset: int = 0,
                all_features: bool = False, hidden: frozenset[int] = frozenset()) -> dict:
        """Features for the browser's grid: those with examples or labels (every feature with ``all_features``,
        when each has a published preview), less the ``hidden`` ones (an SAE's always-on features), filtered by id,
        label and category words (see :mod:`.label_search`), sorted, paginated."""
        check_choice("sort", sort, SORTS)
        rate, mean = self.firing_rate(), self.mean_activation()
        fired = (self.top_gens[:, 0] >= 0).tolist()
        labels = self.shown_labels()
        ids = list(range(self.n_latents)) if all_features else [f for f in range(self.n_latents)
                                                                  if fired[f] or f in labels]
        ids = [f for f in ids if f not in hidden] if hidden else ids
        query = (query or "").strip()
        if query:
            ids = [f for f in ids if label_search.matches(query, f, labels.get(f))]
        if sort == "relevance":
            wanted = label_search.query_words(query)
            relevance = {f: label_search.score(wanted, labels[f])[0] if wanted and f in labels else 0.0 for f in ids}
            ids.sort(key=lambda f: (-relevance[f], f))
        else:
            key = {"firing_rate": lambda f: -float(rate[f]), "mean_activation": lambda f: -float(mean[f]),
                   "id": lambda f: f}[sort]
            ids.sort(key=key)
        rows = []
        for f in ids[offset: offset + limit]:
            label = labels.get(f)
            rows.append({"id": f, "label": label.text if label else "", "category": label.category if label else "",
                         "confidence": label.confidence if label else "", "source": label.source if label else "",
                         "firing_rate": float(rate[f]), "mean_activation": float(mean[f]),
                         "top_generation": int(self.top_gens[f, 0]), "top_token": self.top_token(f)})
        return {"total": len(ids), "features": rows, "meta": self.meta, "generations_seen": self.next_id,
                "labelled": len(labels)}

    def set_label(self, feature: int, text: str) -> None:
        """The user's label of a feature (empty clears it, and an imported label shows again)."""
        feature = self._check_feature(feature)
        text = validate_label(text)
        if text:
            self.labels[feature] = text
        else:
            self.labels.pop(feature, None)
        self._labels_changed = True

    # ------------------------------------------------------------- disk
    @classmethod
    def open_for(cls, folder: str | Path, sae, top_n: int | None = None) -> FeatureAtlas:
        """The atlas in ``folder`` if it belongs to ``sae`` (same weight fingerprint), else a new one. ``top_n``
        None keeps the atlas's own (8 for a new one); an atlas that holds labels only takes any top_n."""
        folder = Path(folder)
        meta = sae.identity()
        if not (folder / "index.json").is_file():
            return cls(sae.n_latents, top_n=top_n or DEFAULT_TOP_N, meta=meta)
        atlas = cls.load(folder)
        if atlas.meta.get("fingerprint") != meta["fingerprint"]:
            raise SAEInputError(f"the atlas {folder} was built for another SAE ({atlas.meta.get('name')!r}, "
                                f"{atlas.meta.get('hookpoint')}); give this one its own atlas name")
        if top_n is not None and atlas.top_n != top_n:
            if atlas.next_id > 0:
                raise SAEInputError(f"the atlas {folder} keeps the top {atlas.top_n} examples per feature, not "
                                    f"{top_n}; use top_n {atlas.top_n} or a new atlas name")
            fresh = cls(atlas.n_latents, top_n=top_n, meta=atlas.meta)
            fresh.labels, fresh.imported = atlas.labels, atlas.imported
            return fresh
        return atlas

    def save(self, folder: str | Path) -> Path:
        """Write atomically: thumbnails first, then the tables, then the index that points to them."""
        folder = Path(folder)
        (folder / "thumbs").mkdir(parents=True, exist_ok=True)
        for gen_id, thumb in self.thumbnails.items():
            target = folder / "thumbs" / f"{gen_id}.jpg"
            if not target.exists():
                with atomic_write(target) as tmp:
                    Image.fromarray(thumb).save(tmp, format="JPEG", quality=88)
        kept = sorted(self.codes)
        tensors = {"top_scores": self.top_scores, "top_gens": self.top_gens,
                   "active_positions": self.active_positions, "activation_sum": self.activation_sum}
        if kept:
            k = self.codes[kept[0]].values.shape[-1]
            tensors["code_values"] = torch.cat([self.codes[g].values.reshape(-1, k) for g in kept])
            tensors["code_indices"] = torch.cat([self.codes[g].indices.reshape(-1, k) for g in kept])
            tensors["code_generations"] = torch.tensor(kept, dtype=torch.long)
        with atomic_write(folder / "atlas.safetensors") as tmp:
            save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp))
        index = {"version": ATLAS_VERSION, "n_latents": self.n_latents, "top_n": self.top_n, "meta": self.meta,
                 "total_positions": self.total_positions, "next_id": self.next_id,
                 "generations": {str(g): asdict(self.generations[g]) for g in kept}}
        atomic_write_text(folder / "index.json", json.dumps(index))
        if self._labels_changed or not (folder / "labels.json").is_file():  # else the sidebar's edits stay
            write_user_labels(folder, self.labels)
            self._labels_changed = False
        for stale in (folder / "thumbs").glob("*.jpg"):
            if stale.stem.isdigit() and int(stale.stem) not in self.codes:
                stale.unlink()
        self.thumbnails.clear()  # on disk now
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureAtlas:
        folder = Path(folder)
        index_path = folder / "index.json"
        if not index_path.is_file():
            raise SAEFormatError(folder, "is not a feature atlas", found="no index.json",
                                 expected="a folder written by SAE Build Atlas or `python -m sae_core atlas`")
        try:
            index = json.loads(index_path.read_text())
            tables = load_file(str(folder / "atlas.safetensors"))
        except Exception as exc:
            raise SAEFormatError(folder, "cannot be read as a feature atlas",
                                 found=f"{type(exc).__name__}: {exc}") from None
        if not isinstance(index, dict):
            raise SAEFormatError(folder, "cannot be read as a feature atlas", found="index.json is not an object")
        check_version(folder, index.get("version", 0), ATLAS_VERSION)
        atlas = cls(int(index["n_latents"]), int(index["top_n"]), index.get("meta", {}))
        atlas.top_scores, atlas.top_gens = tables["top_scores"], tables["top_gens"]
        atlas.active_positions, atlas.activation_sum = tables["active_positions"], tables["activation_sum"]
        atlas.total_positions, atlas.next_id = int(index["total_positions"]), int(index["next_id"])
        offset = 0
        for gen_id in tables.get("code_generations", torch.zeros(0, dtype=torch.long)).tolist():
            raw = index["generations"][str(gen_id)]
            gen = Generation(raw["prompt"], raw["seed"], tuple(raw["grid"]), raw.get("has_thumbnail", False),
                             raw.get("tokens"))
            h, w = gen.grid
            rows = slice(offset, offset + h * w)
            atlas.codes[gen_id] = SparseCode(tables["code_values"][rows].reshape(h, w, -1),
                                             tables["code_indices"][rows].reshape(h, w, -1))
            atlas.generations[gen_id] = gen
            offset += h * w
        atlas.labels = read_user_labels(folder, atlas.n_latents)
        atlas.imported = read_imported_labels(folder, atlas.n_latents)
        return atlas


def resolve_atlas_name(name: str, roots: list[str | Path]) -> Path:
    """The atlas folder ``name`` (relative to one of ``roots``), refusing anything that leaves them.

    Names come from HTTP requests: absolute paths, ``..`` segments, backslashes, links out of the folder and names
    not ending in ``.atlas`` are refused before any file is touched.
    """
    if not isinstance(name, str) or not name or len(name) > 512:
        raise SAEInputError("an atlas name must be a non-empty relative path of at most 512 characters")
    if "\\" in name:
        raise SAEInputError(f"atlas name {shown(name)} must be a plain relative path inside models/sae")
    relative_parts(name, "atlas name")
    if not name.endswith(ATLAS_SUFFIX):
        raise SAEInputError(f"atlas name {shown(name)} must end with {ATLAS_SUFFIX}")
    for root in roots:
        try:
            candidate = resolve_inside(root, name, "atlas name")
        except SAEInputError as exc:
            if "does not exist" in str(exc):
                continue
            raise
        if (candidate / "index.json").is_file():
            return candidate
    raise SAEInputError(f"no atlas named {shown(name)} in models/sae")


def atlas_name_for(sae_path: str | Path | None, roots: list[str | Path]) -> str | None:
    """The browser's name of the atlas beside an SAE (relative to the model folder holding it), if one exists."""
    if not sae_path:
        return None
    folder = Path(os.path.normpath(os.path.abspath(atlas_dir_for(sae_path))))
    for root in roots:
        root_path = Path(os.path.normpath(os.path.abspath(root)))
        if folder.is_relative_to(root_path) and (folder / "index.json").is_file():
            return folder.relative_to(root_path).as_posix()
    return None


def list_atlases(roots: list[str | Path], max_depth: int = 4) -> list[dict]:
    """Every atlas under the model folders, with what the browser's picker shows."""
    found = []
    for root in roots:
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for index in sorted(root_path.rglob("index.json")):
            folder = index.parent
            if not folder.name.endswith(ATLAS_SUFFIX) or len(folder.relative_to(root_path).parts) > max_depth \
                    or not is_inside(root_path, folder):
                continue
            try:
                data = json.loads(index.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            found.append({"name": folder.relative_to(root_path).as_posix(), "n_latents": data.get("n_latents"),
                          "generations_seen": data.get("next_id", 0), "meta": data.get("meta", {})})
    return found


def update_label(folder: str | Path, feature: int, text: str) -> str:
    """Set the user's label of one feature without rewriting the atlas tables (labels.json is replaced
    atomically; imported labels are untouched, and show again when the user's label is cleared)."""
    folder = Path(folder)
    n_latents = int(json.loads((folder / "index.json").read_text())["n_latents"])
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < n_latents:
        raise SAEInputError(f"feature {feature!r} does not exist: this atlas has {n_latents} features")
    text = validate_label(text)
    labels = read_user_labels(folder, n_latents)
    if text:
        labels[feature] = text
    else:
        labels.pop(feature, None)
    write_user_labels(folder, labels)
    return text


def _thumbnail(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    pil = Image.fromarray(array[..., :3])
    pil.thumbnail((THUMB_SIZE, THUMB_SIZE))
    return np.asarray(pil)
