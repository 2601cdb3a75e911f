"""Bringing label sets into an SAE's atlas and out again, shared by ``python -m sae_core labels`` and the SAE
Import Labels node.

Importing needs the SAE itself: its feature count bounds the ids, and its weight fingerprint decides which atlas
the labels belong to. When the SAE has no atlas yet, one is created holding labels only (no recorded run), so the
paper's SAEs can be browsed by their published labels and pictures before anything was generated; runs recorded
later are added to the same atlas.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..blocks.names import short_code
from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write_text
from ..sae.hub import download_file
from ..validate import relative_parts, shown
from .feature_atlas import FeatureAtlas
from .label_files import LABEL_FILE_SUFFIXES, MAX_LABEL_FILE_BYTES, export_text, read_label_file
from .labels import (
    ImportedLabel,
    MergeResult,
    ShownLabel,
    all_shown,
    merge_imported,
    read_imported_labels,
    read_user_labels,
    write_imported_labels,
)
from .previews import AUTO, source_for


def fill_block(pattern: str, sae) -> str:
    """``labels/{block}.json`` -> ``labels/down.2.1.json`` for the SAE's block (one setting for several SAEs)."""
    if "{block}" not in pattern:
        return pattern
    try:
        block = short_code(sae.hookpoint or "")
    except SAEInputError:
        raise SAEInputError(f"{shown(pattern)} names {{block}} but this SAE does not say which block it was trained "
                            f"on") from None
    return pattern.replace("{block}", block)


def hub_label_file(repo_id: str, path: str, *, repo_type: str = "dataset", local_dir: str | Path | None = None,
                   offline: bool = False) -> Path:
    """One label file of a hub repo, downloaded once (into ``local_dir``, else the Hugging Face cache)."""
    parts = relative_parts(path, "hub_path")
    if not parts[-1].lower().endswith(LABEL_FILE_SUFFIXES):
        raise SAEInputError(f"hub_path {shown(path)} must name a .json or .csv file")
    return download_file(repo_id, "/".join(parts), repo_type=repo_type, local_dir=local_dir, offline=offline,
                         max_bytes=MAX_LABEL_FILE_BYTES)


def read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(folder, "cannot be read as a feature atlas", found=f"{type(exc).__name__}") from None
    if not isinstance(index, dict) or not isinstance(index.get("meta", {}), dict) or "n_latents" not in index:
        raise SAEFormatError(folder, "cannot be read as a feature atlas", found="index.json without n_latents")
    return index


@dataclass(frozen=True)
class ImportReport:
    folder: Path
    created: bool
    merge: MergeResult | None
    source: str | None
    labelled: int
    preview: str  # what the sidebar shows as pictures

    def summary(self, name: str) -> str:
        parts = [f"{name}: {'new atlas (labels only until runs are recorded); ' if self.created else ''}"]
        if self.merge is None:
            parts.append("no labels imported")
        else:
            m = self.merge
            parts.append(f"{m.imported} labels imported from {self.source}")
            details = [f"{m.replaced} replaced earlier imported labels"] if m.replaced else []
            if m.dropped:
                details.append(f"{m.dropped} earlier imported labels removed")
            if m.shadowed:
                details.append(f"{m.shadowed} stay behind labels you wrote, which win")
            parts.append(f" ({'; '.join(details)})" if details else "")
        parts.append(f"; {self.labelled} features labelled; previews: {self.preview}")
        return "".join(parts)


def import_labels(folder: str | Path, sae, rows: dict[int, ImportedLabel] | None, source: str | None = None, *,
                  replace: bool = False, preview: str | None = None, atlas_name: str | None = None) -> ImportReport:
    """Merge ``rows`` into the imported labels of ``sae``'s atlas in ``folder`` (created when missing), and set its
    preview source (``preview``: None keeps it, ``auto``, ``none`` or a source line). Only the label file and, for
    a new preview setting, the index are written; the atlas's tables are not touched."""
    folder = Path(folder)
    created = not (folder / "index.json").is_file()
    if created:
        atlas = FeatureAtlas(sae.n_latents, meta=sae.identity())
        if preview not in (None, AUTO):
            atlas.meta["preview"] = preview
        atlas.save(folder)
        index = read_index(folder)
    else:
        index = read_index(folder)
        meta = index.get("meta", {})
        if meta.get("fingerprint") != sae.fingerprint():
            raise SAEInputError(f"the atlas {folder} was made for another SAE ({meta.get('name')!r}, "
                                f"{meta.get('hookpoint')}); give this one its own atlas name")
        if preview is not None and meta.get("preview", AUTO) != preview:
            meta.pop("preview", None)
            if preview != AUTO:
                meta["preview"] = preview
            index["meta"] = meta
            atomic_write_text(folder / "index.json", json.dumps(index))
    n_latents = int(index["n_latents"])
    user = read_user_labels(folder, n_latents)
    imported = read_imported_labels(folder, n_latents)
    merge = None
    if rows is not None:
        imported, merge = merge_imported(imported, rows, user, replace=replace)
        write_imported_labels(folder, imported)
    found = source_for(index.get("meta", {}), atlas_name if atlas_name is not None else str(folder), n_latents)
    described = found.spec if found is not None else "none (the thumbnails of recorded runs)"
    return ImportReport(folder, created, merge, source, len(set(user) | set(imported)), described)


def import_label_file(folder: str | Path, sae, path: str | Path, *, name: str | None = None, **options) -> ImportReport:
    """Import a .json or .csv file (``name``: how errors and the labels' source name it)."""
    name = name or Path(path).name
    rows = read_label_file(path, sae.n_latents, name=name, source=f"file {name}")
    return import_labels(folder, sae, rows, f"file {name}", **options)


def export_labels(folder: str | Path, fmt: str) -> str:
    """The labels shown in the atlas (the user's where written, else imported), as JSON or CSV text."""
    folder = Path(folder)
    n_latents = int(read_index(folder)["n_latents"])
    return export_text(all_shown(read_user_labels(folder, n_latents), read_imported_labels(folder, n_latents)), fmt)


def atlas_labels(folder: str | Path, sae) -> dict[int, ShownLabel]:
    """The labels shown in ``sae``'s atlas (refused when the atlas belongs to another SAE)."""
    folder = Path(folder)
    index = read_index(folder)
    meta = index.get("meta", {})
    if meta.get("fingerprint") != sae.fingerprint():
        raise SAEInputError(f"the atlas {folder} was made for another SAE ({meta.get('name')!r}, "
                            f"{meta.get('hookpoint')}); its labels do not describe this one")
    n_latents = int(index["n_latents"])
    return all_shown(read_user_labels(folder, n_latents), read_imported_labels(folder, n_latents))
