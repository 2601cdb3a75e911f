"""What the feature browser's HTTP routes do, without the HTTP: parse and validate request parameters,
read atlases (cached while unchanged on disk) and answer plain dicts, files to serve or text to download. The
ComfyUI adapter only maps these to aiohttp responses, so every validation rule is testable here."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import SAEInputError
from ..sae import known
from ..validate import check_choice, check_text
from .feature_atlas import FeatureAtlas, list_atlases, resolve_atlas_name, update_label
from .label_import import export_labels
from .labels import IMPORTED_FILE, USER_FILE
from .previews import PreviewCache, block_of, source_for

MAX_LABEL_BODY = 4096  # bytes: a label request is tiny; anything larger is refused unread
MAX_PAGE = 500
EXPORT_FORMATS = {"json": "application/json", "csv": "text/csv"}


def int_param(params: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0,
               maximum: int | None = None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise SAEInputError(f"parameter {name!r} is required")
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SAEInputError(f"parameter {name!r} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise SAEInputError(f"parameter {name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def excluded_features(atlas_name: str, n_latents: int) -> frozenset[int]:
    """The always-on features of the known published SAE an atlas belongs to (none for other atlases)."""
    entry = known.lookup(atlas_name)
    if entry is None or entry.n_latents not in (None, n_latents):
        return frozenset()
    return frozenset(f for f in entry.exclude if 0 <= f < n_latents)


class AtlasService:
    """The browser backend over the SAE model folders returned by ``roots()``."""

    def __init__(self, roots: Callable[[], list[str]], previews: PreviewCache | None = None):
        self.roots = roots
        self.previews = previews or PreviewCache()
        self._cache: dict[Path, tuple[tuple, FeatureAtlas]] = {}

    def _folder(self, params: Mapping[str, str]) -> Path:
        return resolve_atlas_name(params.get("atlas", ""), self.roots())

    def _atlas(self, folder: Path) -> FeatureAtlas:
        stamp = tuple((folder / name).stat().st_mtime_ns if (folder / name).exists() else 0
                      for name in ("atlas.safetensors", "index.json", USER_FILE, IMPORTED_FILE))
        hit = self._cache.get(folder)
        if hit is None or hit[0] != stamp:
            hit = (stamp, FeatureAtlas.load(folder))
            self._cache[folder] = hit
        return hit[1]

    def atlases(self) -> dict:
        return {"atlases": list_atlases(self.roots())}

    def features(self, params: Mapping[str, str]) -> dict:
        """The grid: every feature when the atlas has published previews, else those with examples or labels; the
        SAE's always-on features (its authors' exclude list) only with ``show_excluded=1``."""
        atlas = self._atlas(self._folder(params))
        source = source_for(atlas.meta, params["atlas"], atlas.n_latents)
        excluded = excluded_features(params["atlas"], atlas.n_latents)
        show = int_param(params, "show_excluded", 0, 0, 1) == 1
        answer = atlas.summary(query=check_text("q", params.get("q", ""), 200), sort=params.get("sort", "firing_rate"),
                               limit=int_param(params, "limit", 200, 1, MAX_PAGE),
                               offset=int_param(params, "offset", 0), all_features=source is not None,
                               hidden=frozenset() if show else excluded)
        answer["preview"] = self._preview_info(atlas, params["atlas"])
        answer["excluded"] = sorted(excluded)
        return answer

    def feature(self, params: Mapping[str, str]) -> dict:
        atlas = self._atlas(self._folder(params))
        answer = atlas.feature(int_param(params, "id", maximum=atlas.n_latents - 1))
        answer["preview"] = self._preview_info(atlas, params["atlas"])
        return answer

    def labels_of(self, name: str, features: list[int]) -> dict[int, str]:
        """The shown label of each of ``features`` that has one in atlas ``name`` (read fresh when it changed on
        disk: the inspector shows labels edited in the sidebar)."""
        atlas = self._atlas(resolve_atlas_name(name, self.roots()))
        shown = atlas.shown_labels()
        return {f: shown[f].text for f in features if f in shown and shown[f].text}

    def has_previews(self, name: str) -> bool:
        """Whether atlas ``name`` has published feature pictures (the preview route answers for it)."""
        atlas = self._atlas(resolve_atlas_name(name, self.roots()))
        return source_for(atlas.meta, name, atlas.n_latents) is not None

    def _preview_info(self, atlas: FeatureAtlas, name: str) -> dict | None:
        """What the browser needs to show pictures: the source, and whether missing ones can be downloaded now."""
        source = source_for(atlas.meta, name, atlas.n_latents)
        return None if source is None else {"source": source.spec, "online": self.previews.hub_reachable()}

    def preview(self, params: Mapping[str, str]) -> Path:
        """The published picture of feature ``id``: from the atlas's previews folder, downloaded there on first
        view. PreviewUnavailable (a 404) when the atlas has no preview source or the picture cannot be had."""
        folder = self._folder(params)
        atlas = self._atlas(folder)
        feature = int_param(params, "id", maximum=atlas.n_latents - 1)
        source = source_for(atlas.meta, params["atlas"], atlas.n_latents)
        if source is None:
            raise SAEInputError(f"atlas {params['atlas']!r} has no preview source; set one with SAE Import Labels "
                                f"(preview_source)")
        return self.previews.path(folder, source, feature, block_of(atlas.meta) or "")

    def labels_file(self, params: Mapping[str, str]) -> tuple[str, str, str]:
        """(text, content type, file name) of the atlas's labels as JSON or CSV, for the sidebar's export links."""
        folder = self._folder(params)
        fmt = check_choice("format", params.get("format", "json"), EXPORT_FORMATS)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", folder.name.removesuffix(".atlas"))[:80] or "atlas"
        return export_labels(folder, fmt), EXPORT_FORMATS[fmt], f"{stem}.labels.{fmt}"

    def thumbnail(self, params: Mapping[str, str]) -> Path:
        folder = self._folder(params)
        path = folder / "thumbs" / f"{int_param(params, 'gen')}.jpg"
        if not path.is_file():
            raise SAEInputError(f"generation {params.get('gen')} has no thumbnail in this atlas")
        return path

    def set_label(self, body: bytes) -> dict:
        """``{"atlas": name, "id": feature, "label": text}``; refuses oversized or malformed bodies."""
        if len(body) > MAX_LABEL_BODY:
            raise SAEInputError(f"request body of {len(body)} bytes is larger than {MAX_LABEL_BODY}")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SAEInputError("request body must be JSON: {\"atlas\": ..., \"id\": ..., \"label\": ...}") from None
        if not isinstance(data, dict):
            raise SAEInputError("request body must be a JSON object")
        folder = resolve_atlas_name(data.get("atlas", ""), self.roots())
        label = update_label(folder, data.get("id"), data.get("label", ""))
        return {"atlas": data["atlas"], "id": data["id"], "label": label}
