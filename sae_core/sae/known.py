"""The one table of published SAEs SAE Lab knows (``known_saes.json``, data, not code): for each hub repo, the format,
block, stream, input kind and model family of its SAEs, where the pictures of their features are published, and the
always-on features their authors leave out.

A checkpoint is matched by where it sits: a hub download lands in ``models/sae/<owner>__<name>/`` (Load SAE) or in
the Hugging Face cache as ``models--<owner>--<name>/snapshots/<revision>/``, and the rest of its path is matched
against the entry's ``subfolder`` glob. Load SAE, ``python -m sae_core inspect`` and the atlas all ask here.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("known_saes.json")


@dataclass(frozen=True)
class KnownPreviews:
    """Published pictures of each feature: a source line (see :mod:`..atlas.previews`), the SAEs they exist for
    (their hookpoints, none listed = the entry's one SAE, and feature count), and where the ``{part}`` folders
    start (``part{n}`` holds the features from ``part_starts[n - 1]`` on)."""

    source: str
    hookpoints: tuple[str, ...] = ()
    n_latents: int | None = None
    part_starts: tuple[int, ...] = ()


@dataclass(frozen=True)
class KnownCheckpoint:
    repo: str
    title: str
    subfolder: str = "*"
    format: str = ""
    hookpoint: str | None = None
    stream: str | None = None
    input_kind: str | None = None
    model_family: str | None = None
    d_in: int | None = None
    n_latents: int | None = None
    previews: KnownPreviews | None = None
    labels: str | None = None
    exclude: tuple[int, ...] = field(default_factory=tuple)
    unsupported: str | None = None  # why SAE Lab cannot load it

    def holds(self, relative: str) -> bool:
        """Whether the SAE folder ``relative`` (posix, inside the repo; '' = its root) is one of this entry's."""
        if self.subfolder == "*":
            return True
        return fnmatch.fnmatchcase(relative, self.subfolder) if self.subfolder else relative == ""


def _entry(raw: dict) -> KnownCheckpoint:
    previews = raw.get("previews")
    return KnownCheckpoint(
        repo=raw["repo"], title=raw.get("title", raw["repo"]), subfolder=raw.get("subfolder", "*"),
        format=raw.get("format", ""), hookpoint=raw.get("hookpoint"), stream=raw.get("stream"),
        input_kind=raw.get("input_kind"), model_family=raw.get("model_family"), d_in=raw.get("d_in"),
        n_latents=raw.get("n_latents"), labels=raw.get("labels"), exclude=tuple(raw.get("exclude") or ()),
        unsupported=raw.get("unsupported"),
        previews=KnownPreviews(previews["source"], tuple(previews.get("hookpoints") or ()), previews.get("n_latents"),
                               tuple(previews.get("part_starts") or ())) if previews else None,
    )


@lru_cache(maxsize=1)
def known_checkpoints() -> tuple[KnownCheckpoint, ...]:
    """Every entry of the table, in its order."""
    return tuple(_entry(raw) for raw in json.loads(TABLE.read_text(encoding="utf-8"))["checkpoints"])


def by_repo(repo: str) -> list[KnownCheckpoint]:
    return [entry for entry in known_checkpoints() if entry.repo == repo]


def _repo_of_part(part: str) -> str | None:
    """``owner__name`` (Load SAE's folder) or ``models--owner--name`` (the Hugging Face cache) -> ``owner/name``."""
    if part.startswith("models--"):
        owner, sep, name = part[len("models--"):].partition("--")
    else:
        owner, sep, name = part.partition("__")
    return f"{owner}/{name}" if sep and owner and name else None


def locate(path: str | Path) -> tuple[str, str] | None:
    """(hub repo, SAE folder inside it) of a path inside a known repo's download, else None. An atlas
    (``<sae>.atlas``) or a native file counts as the SAE folder it sits in."""
    parts = [p for p in str(path).replace("\\", "/").split("/") if p]
    if parts and parts[-1].endswith(".atlas"):
        parts[-1] = parts[-1][: -len(".atlas")]
    elif parts and parts[-1].endswith(".safetensors"):
        parts.pop()
    for i, part in enumerate(parts):
        repo = _repo_of_part(part)
        if repo is None or not by_repo(repo):
            continue
        rest = parts[i + 1:]
        if part.startswith("models--") and len(rest) >= 2 and rest[0] == "snapshots":
            rest = rest[2:]  # models--owner--name/snapshots/<revision>/...
        return repo, "/".join(rest)
    return None


def lookup(path: str | Path) -> KnownCheckpoint | None:
    """The table's entry for the SAE at ``path``, or None when it is not inside a known repo's download."""
    where = locate(path)
    if where is None:
        return None
    repo, relative = where
    return next((entry for entry in by_repo(repo) if entry.holds(relative)), None)


def repo_entries() -> dict[str, KnownCheckpoint]:
    """The first entry of each repo, by repo (for listings: ``KNOWN_REPOS``, the README table)."""
    entries: dict[str, KnownCheckpoint] = {}
    for entry in known_checkpoints():
        entries.setdefault(entry.repo, entry)
    return entries
