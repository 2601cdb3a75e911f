"""Find and load SAEs in any supported format, recognised by content (config fields, tensor names,
metadata) rather than by file or folder names. Each format module follows :class:`.base.CheckpointFormat`.

What a checkpoint does not say about itself (the block of a repo-root SAE, its stream, model family, always-on
features) comes from the table of known published checkpoints (:mod:`..known`), matched by the download folder;
what neither says is guessed from the block and width last (:func:`...blocks.families.infer_model_family`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...blocks.names import diffusers_name, infer_model_family, is_unet_name
from ...errors import SAEFormatError, SAEInputError
from .. import known
from ..model import SparseAutoencoder
from . import fluxlens, native, saelens, sparsify, unbox
from .common import read_safetensors_metadata

FORMATS = (native, unbox, sparsify, saelens, fluxlens)  # native is a file; the others are folders
FORMAT_NAMES = tuple(fmt.NAME for fmt in FORMATS)
_EXPECTED = (
    "a native .safetensors SAE file, or a folder holding config.json + state_dict.pth (sdxl-unbox), "
    "cfg.json + sae.safetensors (sparsify/SAeUron), cfg.json + sae_weights.safetensors (SAELens) or "
    "config.json + model.safetensors (fluxlens)"
)


@dataclass(frozen=True)
class FoundSAE:
    """One loadable SAE: its format, where it is (a file for native, else a folder) and its hookpoint."""

    format: str
    path: Path
    hookpoint: str | None


def detect(path: str | Path) -> FoundSAE | None:
    """The SAE stored exactly at ``path`` (a file, or a folder in a folder format), or None."""
    path = Path(path)
    for fmt in FORMATS:
        if fmt.matches(path):
            entry = known.lookup(path)
            return FoundSAE(fmt.NAME, path, fmt.hookpoint(path) or (entry.hookpoint if entry else None))
    return None


def find_saes(root: str | Path, max_depth: int = 4) -> list[FoundSAE]:
    """Every SAE at or below ``root`` (format folders are not searched inside), sorted by path."""
    root = Path(root)
    found: list[FoundSAE] = []
    if root.is_file():
        hit = detect(root)
        return [hit] if hit else []
    base_depth = len(root.parts)
    for current, dirs, files in os.walk(root, followlinks=True):
        folder = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        hit = detect(folder)
        if hit is not None:
            found.append(hit)
            dirs[:] = []
            continue
        for name in sorted(files):
            if name.endswith(".safetensors"):
                file_hit = detect(folder / name)
                if file_hit is not None:
                    found.append(file_hit)
        if len(folder.parts) - base_depth >= max_depth:
            dirs[:] = []
    return sorted(found, key=lambda f: str(f.path))


def _load_found(found: FoundSAE) -> SparseAutoencoder:
    fmt = next(fmt for fmt in FORMATS if fmt.NAME == found.format)
    sae = fmt.load(found.path)
    sae.source_path = str(found.path)
    entry = known.lookup(found.path)
    if entry is not None:
        declared = getattr(fmt, "declared_stream", None)
        _apply_known(sae, entry, found.path, stream_from_checkpoint=declared is not None and bool(declared(found.path)))
    if sae.model_family is None:
        unet = sae.hookpoint is not None and is_unet_name(sae.hookpoint)
        sae.model_family = infer_model_family(sae.hookpoint, sae.d_in) or (
            getattr(fmt, "UNET_FAMILY", None) if unet else None)
    return sae


def _apply_known(sae: SparseAutoencoder, entry: known.KnownCheckpoint, path: Path, *,
                 stream_from_checkpoint: bool) -> None:
    """Fill what the checkpoint left unsaid from its table entry, after checking it is the SAE the entry means."""
    published = (entry.format or sae.source_format, entry.d_in or sae.d_in, entry.n_latents or sae.n_latents)
    if published != (sae.source_format, sae.d_in, sae.n_latents):
        raise SAEFormatError(path, f"sits in the download folder of {entry.repo} but is not the SAE published there",
                             found=f"a {sae.source_format} SAE {sae.d_in}->{sae.n_latents}",
                             expected=f"a {published[0]} SAE {published[1]}->{published[2]}")
    sae.hookpoint = sae.hookpoint or entry.hookpoint
    sae.input_kind = sae.input_kind or entry.input_kind
    sae.model_family = sae.model_family or entry.model_family
    if entry.stream and not stream_from_checkpoint:
        sae.stream = entry.stream
    if not sae.excluded:
        sae.excluded = tuple(sorted({f for f in entry.exclude if 0 <= f < sae.n_latents}))
    sae.extra = {**sae.extra, "known_repo": entry.repo}


def refuse_unsupported(path: Path) -> None:
    """A known published checkpoint SAE Lab cannot load gets its reason, not "no SAE of a known format"."""
    entry = known.lookup(path)
    if entry is not None and entry.unsupported:
        raise SAEFormatError(path, f"is {entry.title} ({entry.repo}), which SAE Lab cannot load: {entry.unsupported}",
                             found=f"the {entry.format} format")


def _pick(candidates: list[FoundSAE], hookpoint: str | None, root: Path, hint_name: str) -> FoundSAE:
    if hookpoint is None:
        if len(candidates) == 1:
            return candidates[0]
        listing = ", ".join(f"{c.path.relative_to(root) if c.path != root else '.'} ({c.hookpoint or '?'})"
                            for c in candidates)
        raise SAEInputError(f"{root.name} holds {len(candidates)} SAEs; choose one with {hint_name}: {listing}")
    wanted = diffusers_name(hookpoint) or hookpoint
    matching = [c for c in candidates
                if c.hookpoint and (diffusers_name(c.hookpoint) or c.hookpoint) == wanted]
    if len(matching) != 1:
        hooks = ", ".join(sorted({c.hookpoint or "?" for c in candidates}))
        raise SAEInputError(f"{root.name} has {len(matching) or 'no'} SAE(s) for hookpoint {hookpoint!r}; "
                            f"available hookpoints: {hooks}")
    return matching[0]


def load_sae(source: str | Path, *, hookpoint: str | None = None,
             hint_name: str = "hookpoint=...") -> SparseAutoencoder:
    """Load an SAE from a native file, a format folder, or a folder holding several (pick by hookpoint).

    ``source`` may also be ``hf://owner/repo[/subfolder]`` to download from the Hugging Face Hub. ``hint_name`` is
    how an error about a folder holding several SAEs names the way to choose one (the node's input).
    """
    text = str(source)
    if text.startswith("hf://"):
        parts = [p for p in text[len("hf://"):].split("/") if p]
        if len(parts) < 2:
            raise SAEInputError(f"{text!r} is not a hub address; expected hf://owner/repo[/subfolder]")
        repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:]) or None
        return load_sae_from_hub(repo_id, subfolder=subfolder, hookpoint=hookpoint)
    path = Path(source).expanduser()
    if not path.exists():
        raise SAEFormatError(path, "does not exist", expected=_EXPECTED)
    refuse_unsupported(path)
    hit = detect(path)
    if hit is None and path.is_file():
        parent_hit = detect(path.parent)
        if parent_hit is not None and parent_hit.path == path.parent:
            hit = parent_hit
        elif path.suffix == ".safetensors":
            if read_safetensors_metadata(path) is None:
                native.load(path)  # raises the precise read error (truncated, corrupt...)
            raise SAEFormatError(path, "is a .safetensors file without SAE metadata and no config beside it",
                                 found=f"metadata {sorted(read_safetensors_metadata(path) or {})}",
                                 expected=_EXPECTED)
        else:
            raise SAEFormatError(path, "is not an SAE checkpoint of a known format",
                                 found=f"a {path.suffix or 'suffix-less'} file", expected=_EXPECTED)
    if hit is None:
        candidates = find_saes(path)
        if not candidates:
            listing = sorted(p.name for p in path.iterdir())[:20]
            raise SAEFormatError(path, "contains no SAE of a known format", found=f"entries {listing}",
                                 expected=_EXPECTED)
        hit = _pick(candidates, hookpoint, path, hint_name)
    return _load_found(hit)


def load_sae_from_hub(repo_id: str, subfolder: str | None = None, *, hookpoint: str | None = None,
                      local_dir: str | Path | None = None, revision: str | None = None, offline: bool = False):
    """Download (or reuse) and load one SAE from a hub repo."""
    from ..hub import download_sae

    folder = download_sae(repo_id, subfolder, local_dir=local_dir, revision=revision, offline=offline)
    return load_sae(folder, hookpoint=hookpoint)


__all__ = ["FORMAT_NAMES", "FoundSAE", "detect", "find_saes", "load_sae", "load_sae_from_hub"]
