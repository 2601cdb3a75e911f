"""Published preview images of features: where they come from, and a cache of them beside the SAE.

The demos of *Unpacking SDXL Turbo* show one picture of each feature's top activating generations, published in a
hub repo as ``<block>/<feature>.jpg`` (SDXL) or ``flux_18/part<1|2>/<feature>.jpg`` (Flux). Which SAE's features have
such pictures is data, not code: the table of known published checkpoints (:mod:`..sae.known`, keyed by the hub repo
the SAE was downloaded from, which Load SAE names ``models/sae/<owner>__<name>/``), and a source the user sets per
atlas (kept in its index, ``meta["preview"]``), written as one line::

    dataset:surokpro2/sdxl_sae_images/{block}/{feature}.jpg     # [model:|dataset:]owner/name/path pattern

``{feature}`` is the feature id and ``{block}`` the SAE's block as a short code (``down.2.1``, ``mid.0``); ``{part}``
is the numbered folder a feature's picture is in, for the sources of the table that split their pictures so (the
Flux demo's ``part1`` holds features 0..7000, ``part2`` the rest, as its ``app.py`` reads them). A picture
is downloaded the first time it is viewed into ``<atlas>/previews/`` (the atlas sits beside its SAE), and served
from there afterwards, with no network: a grid of 300 features must not cost 300 requests to the hub each time.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..blocks.names import short_code
from ..errors import SAEHubError, SAEInputError
from ..sae import known
from ..sae.hub import REPO_TYPES, check_repo_id, download_file, hub_offline
from ..validate import check_text, is_inside, relative_parts, resolve_inside, shown

AUTO, NONE = "auto", "none"
PREVIEW_DIR = "previews"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PREVIEW_BYTES = 4 << 20
RETRY_AFTER_S = 60.0  # after the hub could not be reached, do not ask again for this long


# the published previews of the table of known checkpoints, by hub repo
KNOWN_PREVIEWS: dict[str, known.KnownPreviews] = {
    entry.repo: entry.previews for entry in known.known_checkpoints() if entry.previews is not None}


@dataclass(frozen=True)
class PreviewSource:
    repo: str
    repo_type: str
    pattern: str
    part_starts: tuple[int, ...] = ()  # where each {part} folder starts (only for the table's split sources)

    @property
    def spec(self) -> str:
        return f"{self.repo_type}:{self.repo}/{self.pattern}"

    def path_for(self, feature: int, block: str) -> str:
        part = str(bisect.bisect_right(self.part_starts, feature)) if self.part_starts else ""
        filled = self.pattern.replace("{block}", block).replace("{part}", part).replace("{feature}", str(feature))
        return "/".join(relative_parts(filled, "preview path"))


def parse_source(spec: object) -> PreviewSource:
    """``[model:|dataset:]owner/name/pattern`` -> PreviewSource; anything else is refused saying what is valid."""
    text = check_text("preview_source", spec, 300, single_line=True).strip()
    example = KNOWN_PREVIEWS["surokpro2/sdxl-saes"].source
    repo_type = "model"
    for kind in REPO_TYPES:
        if text.startswith(f"{kind}:"):
            repo_type, text = kind, text[len(kind) + 1:]
    parts = text.split("/")
    if len(parts) < 3:
        raise SAEInputError(f"preview source {shown(spec)} must be [dataset:]owner/name/path with {{feature}} in "
                            f"the path, e.g. {example}")
    repo, pattern = check_repo_id("/".join(parts[:2])), "/".join(parts[2:])
    split = next((p.part_starts for p in KNOWN_PREVIEWS.values() if p.source == f"{repo_type}:{repo}/{pattern}"), ())
    rest = pattern.replace("{block}", "").replace("{feature}", "").replace("{part}", "" if split else "{part}")
    if "{feature}" not in pattern or "{" in rest or "}" in rest:
        raise SAEInputError(f"preview path {shown(pattern)} must contain {{feature}} (and may contain {{block}}), "
                            f"e.g. {example}")
    if not pattern.lower().endswith(IMAGE_SUFFIXES):
        raise SAEInputError(f"preview path {shown(pattern)} must end with one of {', '.join(IMAGE_SUFFIXES)}")
    source = PreviewSource(repo, repo_type, pattern, split)
    source.path_for(0, "mid.0")  # no '..', absolute or odd names once filled in
    return source


def check_setting(text: object) -> str | None:
    """A user's preview setting: None (empty: keep the current one), ``auto`` (the known table), ``none`` (no
    previews), or a source line (normalised)."""
    value = check_text("preview_source", text if text is not None else "", 300, single_line=True).strip()
    if not value:
        return None
    if value.lower() in (AUTO, NONE):
        return value.lower()
    return parse_source(value).spec


def block_of(meta: dict) -> str | None:
    try:
        return short_code(meta.get("hookpoint") or "")
    except SAEInputError:
        return None


def source_for(meta: dict, atlas_name: str | Path, n_latents: int | None = None) -> PreviewSource | None:
    """The preview source of an atlas: the user's setting, else the known table's entry for the repo its SAE came
    from (for one of the blocks and the feature count the table lists), else none. ``n_latents``: the atlas's own
    feature count (else the one its SAE's identity recorded)."""
    setting = meta.get("preview") or AUTO
    if setting == NONE:
        return None
    if setting != AUTO:
        try:
            return parse_source(setting)
        except SAEInputError:
            return None
    entry = known.lookup(atlas_name)  # where the atlas sits says which repo its SAE came from
    if entry is None or entry.previews is None:
        return None
    published = entry.previews
    hookpoints = published.hookpoints or ((entry.hookpoint,) if entry.hookpoint else ())
    n_latents = n_latents if n_latents is not None else meta.get("n_latents")
    if hookpoints and block_of(meta) not in {short_code(h) for h in hookpoints}:
        return None
    if published.n_latents is not None and n_latents != published.n_latents:
        return None
    return parse_source(published.source)


class PreviewUnavailable(SAEInputError):
    """No picture to serve: not published for this feature, or not downloaded yet and the hub out of reach."""


class PreviewCache:
    """Downloads pictures on first view into ``<atlas>/previews/`` and serves them from there afterwards. After
    the hub could not be reached it answers at once for ``retry_after`` seconds instead of waiting on the network
    for every picture of the grid."""

    def __init__(self, offline: Callable[[], bool] = hub_offline, retry_after: float = RETRY_AFTER_S,
                 clock: Callable[[], float] = time.monotonic):
        self.offline, self.retry_after, self.clock = offline, retry_after, clock
        self._unreachable_until = 0.0
        self._lock = threading.Lock()

    def hub_reachable(self) -> bool:
        return not self.offline() and self.clock() >= self._unreachable_until

    def path(self, folder: str | Path, source: PreviewSource, feature: int, block: str) -> Path:
        """The local picture of ``feature``, downloading it if needed; PreviewUnavailable if there is none."""
        folder = Path(folder)
        local_dir = folder / PREVIEW_DIR
        relative = source.path_for(feature, block)
        target = resolve_inside(local_dir, relative, "preview path", must_exist=False)
        if not is_inside(folder, target):
            raise SAEInputError("the previews folder of this atlas leads outside it (through a link)")
        if target.is_file():
            return target
        # offline, the hub would only look where we just looked: answer without touching the disk
        if self.offline():
            raise PreviewUnavailable(f"feature {feature} has no preview: offline and not downloaded yet")
        if not self.hub_reachable():
            raise PreviewUnavailable(f"feature {feature} has no preview yet: the hub was not reachable a moment ago")
        try:
            path = download_file(source.repo, relative, repo_type=source.repo_type, local_dir=local_dir,
                                 max_bytes=MAX_PREVIEW_BYTES)
        except SAEHubError as exc:
            if getattr(exc, "unreachable", False):
                with self._lock:
                    self._unreachable_until = self.clock() + self.retry_after
            raise PreviewUnavailable(f"feature {feature} has no preview: {exc}") from None
        if not is_inside(folder, path):
            raise SAEInputError("a downloaded preview landed outside the atlas folder")
        return Path(os.path.normpath(path))
