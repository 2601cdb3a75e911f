"""Feature labels in two layers: the user's own (edited in the SAE Atlas sidebar) and imported ones (label sets
from a file or a hub repo, each remembering where it came from).

Why two layers in two files: a label you typed must never be lost to an import, and an import must not be lost to
a typo either. ``labels.json`` keeps the user's labels exactly as atlases always stored them (``{"id": "text"}``,
so every existing atlas loads unchanged); ``imported_labels.json`` holds the imported ones with their category,
confidence and source. The label shown for a feature is the user's when there is one, else the imported one;
clearing the user's label shows the imported one again. The sidebar and an import write different files, so
neither can overwrite the other's work.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SAEFormatError, SAEInputError
from ..files import atomic_write_text, check_version
from ..validate import shown

USER_FILE = "labels.json"
IMPORTED_FILE = "imported_labels.json"
IMPORTED_VERSION = 1
USER_SOURCE = "user"
MAX_LABEL_LENGTH = 120
MAX_CATEGORY_LENGTH = 40
MAX_SOURCE_LENGTH = 300
CONFIDENCES = ("high", "medium", "low")
_NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f]*$")


def validate_label(text: object) -> str:
    """Labels are short single-line text; anything else is refused rather than stored."""
    if not isinstance(text, str):
        raise SAEInputError(f"a label must be text, got {type(text).__name__}")
    text = text.strip()
    if len(text) > MAX_LABEL_LENGTH:
        raise SAEInputError(f"a label has at most {MAX_LABEL_LENGTH} characters, got {len(text)}")
    if not _NO_CONTROL.match(text):
        raise SAEInputError("a label cannot contain control characters or line breaks")
    return text


def validate_category(text: object) -> str:
    """A category is one short word or phrase (object, scene, color...), stored lower-case."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise SAEInputError(f"a category must be text, got {type(text).__name__}")
    text = text.strip().lower()
    if len(text) > MAX_CATEGORY_LENGTH or not _NO_CONTROL.match(text):
        raise SAEInputError(f"category {shown(text)} must be one line of at most {MAX_CATEGORY_LENGTH} characters")
    return text


def validate_confidence(text: object) -> str:
    """high, medium, low, or empty (not rated)."""
    if text is None:
        return ""
    value = text.strip().lower() if isinstance(text, str) else text
    if value != "" and value not in CONFIDENCES:
        raise SAEInputError(f"confidence {shown(text)} is not valid; valid: {', '.join(CONFIDENCES)} or empty")
    return value


def validate_mean_activation(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SAEInputError(f"meanActivation {shown(value)} must be a finite number")
    return float(value)


@dataclass(frozen=True)
class ImportedLabel:
    text: str
    category: str = ""
    confidence: str = ""
    mean_activation: float | None = None  # as the label set published it (its own data, not this atlas's)
    source: str = ""


@dataclass(frozen=True)
class ShownLabel:
    """What the browser shows for a feature: the user's label or else the imported one, and what it shadows."""

    text: str
    category: str
    confidence: str
    source: str  # "user", or where the imported label came from
    imported: ImportedLabel | None = None  # the imported label behind a user label, if any

    def as_dict(self) -> dict:
        shadowed = asdict(self.imported) if self.imported is not None and self.source == USER_SOURCE else None
        return {"label": self.text, "category": self.category, "confidence": self.confidence, "source": self.source,
                "imported": shadowed}


def shown_label(user: dict[int, str], imported: dict[int, ImportedLabel], feature: int) -> ShownLabel | None:
    """The precedence rule, in one place: the user's label wins over an imported one."""
    behind = imported.get(feature)
    if feature in user:
        return ShownLabel(user[feature], behind.category if behind else "", "", USER_SOURCE, behind)
    if behind is not None:
        return ShownLabel(behind.text, behind.category, behind.confidence, behind.source, behind)
    return None


def all_shown(user: dict[int, str], imported: dict[int, ImportedLabel]) -> dict[int, ShownLabel]:
    """Every labelled feature's shown label, by id."""
    return {f: shown_label(user, imported, f) for f in sorted(set(user) | set(imported))}


# ------------------------------------------------------------------ disk
def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SAEFormatError(path, f"cannot be read as {what}", found=f"{type(exc).__name__}: {exc}") from None


def _feature_id(key: object, n_latents: int | None, path: Path) -> int:
    try:
        feature = int(key)
    except (TypeError, ValueError):
        raise SAEFormatError(path, "holds a label for a feature that is not a number", found=shown(key)) from None
    if feature < 0 or (n_latents is not None and feature >= n_latents):
        raise SAEFormatError(path, "holds a label for a feature the SAE does not have", found=f"feature {feature}",
                             expected=f"ids 0..{(n_latents or 1) - 1}")
    return feature


def read_user_labels(folder: str | Path, n_latents: int | None = None) -> dict[int, str]:
    """``labels.json``: ``{"id": "text"}`` (the format atlases have always written)."""
    path = Path(folder) / USER_FILE
    if not path.is_file():
        return {}
    data = _read_json(path, "feature labels")
    if not isinstance(data, dict) or not all(isinstance(t, str) for t in data.values()):
        raise SAEFormatError(path, "cannot be read as feature labels", expected='{"id": "label", ...}')
    return {_feature_id(f, n_latents, path): t for f, t in data.items() if t}


def write_user_labels(folder: str | Path, labels: dict[int, str]) -> None:
    atomic_write_text(Path(folder) / USER_FILE, json.dumps({str(f): t for f, t in sorted(labels.items())}))


def read_imported_labels(folder: str | Path, n_latents: int | None = None) -> dict[int, ImportedLabel]:
    """``imported_labels.json``: ``{"version": 1, "labels": {"id": {"label", "category", "confidence",
    "mean_activation", "source"}}}``."""
    path = Path(folder) / IMPORTED_FILE
    if not path.is_file():
        return {}
    data = _read_json(path, "imported feature labels")
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise SAEFormatError(path, "cannot be read as imported feature labels",
                             expected='{"version": 1, "labels": {"id": {"label": ...}}}')
    check_version(path, data.get("version", 0), IMPORTED_VERSION)
    found = {}
    for key, raw in data["labels"].items():
        if not isinstance(raw, dict) or not isinstance(raw.get("label"), str):
            raise SAEFormatError(path, "cannot be read as imported feature labels", found=f"entry {shown(key)}")
        found[_feature_id(key, n_latents, path)] = ImportedLabel(
            raw["label"], str(raw.get("category") or ""), str(raw.get("confidence") or ""),
            raw.get("mean_activation") if isinstance(raw.get("mean_activation"), (int, float)) else None,
            str(raw.get("source") or ""))
    return found


def write_imported_labels(folder: str | Path, labels: dict[int, ImportedLabel]) -> None:
    entries = {}
    for feature, label in sorted(labels.items()):
        entry = {"label": label.text, "category": label.category, "confidence": label.confidence,
                 "source": label.source}
        if label.mean_activation is not None:
            entry["mean_activation"] = label.mean_activation
        entries[str(feature)] = entry
    atomic_write_text(Path(folder) / IMPORTED_FILE, json.dumps({"version": IMPORTED_VERSION, "labels": entries}))


@dataclass(frozen=True)
class MergeResult:
    imported: int   # labels taken from the set
    replaced: int   # of which replaced an earlier imported label
    shadowed: int   # of which are hidden behind a label the user wrote (kept; the user's label still shows)
    dropped: int    # earlier imported labels removed (replace=True)


def merge_imported(current: dict[int, ImportedLabel], rows: dict[int, ImportedLabel], user: dict[int, str], *,
                   replace: bool = False) -> tuple[dict[int, ImportedLabel], MergeResult]:
    """A new label set over the imported layer: its ids take the new labels; with ``replace`` every earlier
    imported label goes, else the ones it does not mention stay. The user's layer is never touched."""
    merged = {} if replace else dict(current)
    replaced = sum(1 for f in rows if f in current)
    dropped = len([f for f in current if f not in rows]) if replace else 0
    merged.update(rows)
    return merged, MergeResult(len(rows), replaced, sum(1 for f in rows if f in user), dropped)
